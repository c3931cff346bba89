"""Tools run by hand or by make, not by pytest: `python -m tests.tools.benchmark`, `.replay`, `.secret_scan`.

They import the suite's support module by the name the suite knows it by (pytest puts `tests/` on
the path), so one mypy run checks the whole tree and sees that module once.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
