"""Count what the secret rules find in a tree, to measure false positives on real code.

    python -m tests.tools.secret_scan PATH [PATH ...]

Every regular text file below each PATH (not .git) is scanned as the proxy would scan it; each
finding is printed as path:line rule (never the value), then a count per rule.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

from scout_diff_cache.git.secrets import redact


def main(roots: list[str]) -> None:
    counts: collections.Counter[str] = collections.Counter()
    files = 0
    for root in map(Path, roots):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
            data = path.read_bytes()
            if b"\0" in data[:8000]:
                continue
            files += 1
            _, findings = redact(str(path.relative_to(root)), data.decode("utf-8", "replace"))
            for finding in findings:
                counts[finding.rule] += 1
                print(f"{root}/{finding.path}:{finding.line} {finding.rule}")
    print(f"{files} files scanned, {sum(counts.values())} findings: {dict(sorted(counts.items())) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["."])
