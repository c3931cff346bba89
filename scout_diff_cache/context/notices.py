"""What the log and the counters are told of what is served: secrets found, unreadable entries,
the diff's size. Each is noted once, not on every request that shows it."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..git.content import spell
from ..git.diff import Unreadable, WorkingDiff
from ..git.secrets import Finding
from ..metrics import Metrics

log = logging.getLogger("scout_diff_cache.context.epochs")  # the epochs' one logger, as before the split

#: How many unreadable entries (path, why) are remembered as logged and counted: each is noted once.
UNREADABLE_MEMO = 4096


class Notices:
    """Logs and counts what a snapshot or a diff holds that the operator should know of."""

    def __init__(self, metrics: Metrics, secrets: str) -> None:
        self._metrics = metrics
        self._secrets = secrets  # the rules' `secrets` setting: "redact" or leave the files out
        self._reported: tuple[Finding, ...] = ()
        self._unreadable: dict[Unreadable, None] = {}  # oldest first

    def served(self, diff: WorkingDiff) -> None:
        """A request is served `diff`: its size for the gauge, its secrets and unreadable entries."""
        self._metrics.diff_bytes = diff.text_bytes
        self.report_once(diff.findings)
        self.note_unreadable(diff.unreadable)

    def report_once(self, findings: tuple[Finding, ...]) -> None:
        """A diff's secrets are logged when they change, not on every request."""
        if findings and findings != self._reported:
            self._reported = findings
            self.report("the working diff", findings)

    def note_unreadable(self, entries: Iterable[Unreadable]) -> None:
        """An entry that cannot be read is logged and counted once, not on every request that shows
        its stub (one forgotten by the bounded memo is noted again)."""
        for entry in entries:
            if entry in self._unreadable:
                continue
            if len(self._unreadable) >= UNREADABLE_MEMO:
                del self._unreadable[next(iter(self._unreadable))]
            self._unreadable[entry] = None
            path, why = entry
            self._metrics.unreadable.inc((("reason", why),))
            log.warning("%s cannot be read (%s): the model is shown a stub in its place", spell(path), why)

    def report(self, where: str, findings: tuple[Finding, ...]) -> None:
        """Where secrets were found (path, line, rule), never what they were."""
        done = "redacted" if self._secrets == "redact" else "their files left out"
        places = ", ".join(f"{finding.path}:{finding.line} ({finding.rule})" for finding in findings)
        log.warning("%s: %d secrets found, %s: %s", where, len(findings), done, places)
