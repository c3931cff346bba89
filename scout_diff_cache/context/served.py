"""The served epoch: its snapshot, where its diff's net group ends, and reading the repository
against it. Reading here changes nothing: what to do with a reading is decided in `policy.py`
and done by the switcher, the folder and the state file."""

from __future__ import annotations

import asyncio

import attrs

from ..config import ContextConfig
from ..git.epoch import Epoch
from ..git.reader import Reading, RepositoryReader
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from ..shared import Coalesced, SharedTasks
from .policy import budget, window_limit
from .remembered import EpochPool


class Served:
    """The snapshot being served, the epochs remembered beside it, and the settings they follow."""

    def __init__(self, reader: RepositoryReader, terms: ContextConfig, metrics: Metrics) -> None:
        self.reader = reader
        self.terms = terms
        self.snapshot: Snapshot | None = None
        #: Where the diff's net group ends (a fold, or what the lineage anchored); saved with the epoch.
        self.folded: str | None = None
        self.remembered = EpochPool(terms.remembered_epochs)
        self._metrics = metrics
        self._reading = SharedTasks()
        self._read = Coalesced(self._read_now, self._reading)

    def configure(self, terms: ContextConfig) -> None:
        self.terms = terms
        self.remembered.resize(terms.remembered_epochs)

    async def current(self) -> Reading:
        """HEAD and the working diff against the served snapshot, read after this call began."""
        return await self._read()

    def serve(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._metrics.snapshot_bytes = snapshot.text_bytes

    def snapshot_of(self, base: str | None) -> Snapshot | None:
        """The snapshot of `base` while the proxy still holds it: the current epoch or a remembered one."""
        if self.snapshot is not None and self.snapshot.commit == base:
            return self.snapshot
        return self.remembered.get(base)

    def budget(self, snapshot: Snapshot) -> float:
        """The bytes a diff (or a conversation's changes) may grow to on `snapshot`."""
        limit = budget(snapshot.text_bytes, self.terms.rebase_diff_share, self.terms.rebase_min_diff_bytes)
        return min(limit, window_limit(snapshot)) if snapshot.diff_budget is not None else limit

    def epoch(self, snapshot: Snapshot) -> Epoch:
        """What the state file keeps of `snapshot`: its epoch and the served fold point."""
        return attrs.evolve(snapshot.epoch, folded=self.folded)

    async def close(self) -> None:
        await self._reading.close()
        await asyncio.to_thread(self.reader.close)

    def _read_now(self) -> Reading:
        snapshot = self.snapshot
        if snapshot is None:
            return Reading(None, None, False)
        return self.reader.read(snapshot, self.folded)
