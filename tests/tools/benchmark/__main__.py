"""`python -m tests.tools.benchmark`: run as a package's `__main__`, which worker processes spawned by
the snapshot build do not import again (a plain module run as main would be, in every worker)."""

from . import main

main()
