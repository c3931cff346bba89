"""Folding: the commits since the base become one group of their net changes, when that makes the
upstream re-read less than a rebase would (see `policy.fold_pays`). The snapshot stays."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..git.reader import Reading
from ..git.repository import short
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from .policy import fold_pays
from .served import Served
from .statefile import StateFile

log = logging.getLogger("scout_diff_cache.context.epochs")  # the epochs' one logger, as before the split


class Folder:
    """Folds the served epoch's diff; `switching` says whether a rebase is under way."""

    def __init__(self, served: Served, state_file: StateFile, metrics: Metrics, switching: Callable[[], bool]) -> None:
        self._served = served
        self._state_file = state_file
        self._metrics = metrics
        self._switching = switching

    async def fold(self, snapshot: Snapshot, reading: Reading) -> bool:
        """Whether the diff was folded (by this call or another meanwhile): then read it again."""
        served = self._served
        if reading.base is None or reading.head is None or reading.head == served.folded or self._switching():
            return False  # folded already and still too large, or a rebase is under way
        net, rebase = await asyncio.to_thread(served.reader.costs, snapshot, reading.head)
        if served.folded == reading.head:
            return True  # another request folded meanwhile
        if not fold_pays(net, rebase, served.budget(snapshot)) or served.snapshot is not snapshot:
            return False
        served.folded = reading.head
        self._metrics.folds.inc()
        await self._state_file.save(served.epoch(snapshot))
        log.info("folded the diff's commits up to %s into their net changes: %d bytes", short(reading.head), net)
        return True
