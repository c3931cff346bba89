"""Moving the served epoch: the first one (the saved epoch if still usable), and every switch to a
new HEAD, built or recalled from the remembered epochs, warmed up or not, then swapped at once."""

from __future__ import annotations

import asyncio
import logging
import time

import attrs

from ..errors import ProxyError
from ..git.epoch import Epoch
from ..git.repository import short
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from ..shared import SharedTasks
from ..usage import Usage
from .building import Builder
from .policy import closest_remembered
from .served import Served
from .statefile import StateFile

log = logging.getLogger("scout_diff_cache.context.epochs")  # the epochs' one logger, as before the split


@attrs.frozen
class Rebase:
    previous: str | None
    base: str | None
    warmup: Usage | None
    seconds: float


class Switcher:
    """Starts and switches the served epoch; one switch per target at a time, each its own task."""

    def __init__(self, served: Served, builder: Builder, state_file: StateFile, metrics: Metrics) -> None:
        self._served = served
        self._builder = builder
        self._state_file = state_file
        self._metrics = metrics
        self._tasks = SharedTasks()  # the first epoch and every switch, by target
        self.last_rebase: Rebase | None = None

    def busy(self) -> bool:
        return self._tasks.busy()

    async def close(self) -> None:
        await self._tasks.close()

    async def start(self) -> Snapshot:
        """The first epoch: the saved one if it is still usable (same bytes as before a restart)."""
        if self._served.snapshot is not None:
            return self._served.snapshot
        return await self._tasks.join("start", self._start)

    async def first_base(self) -> tuple[str | None, Epoch | None]:
        """The saved base if still usable (not with every-commit), else HEAD; and the saved epoch."""
        reader = self._served.reader
        saved = await asyncio.to_thread(self._state_file.load)
        head = await asyncio.to_thread(reader.head)
        if (
            saved is not None
            and self._served.terms.rebase != "every-commit"
            and await asyncio.to_thread(reader.usable, saved.base)
        ):
            self._served.folded = saved.folded
            return saved.base, saved
        return head, saved

    async def switch_to(self, head: str | None, prewarm: bool) -> Rebase:
        return await self._tasks.join(("switch", head), lambda: self._switch(head, prewarm))

    def switch_in_background(self, head: str | None) -> None:
        if not self._tasks.busy():
            self._tasks.start(("switch", head), lambda: self._switch(head, prewarm=True))

    def refit_in_background(self) -> None:
        """Fit the served snapshot again (the window changed): built from its own sections, so
        only the files taken back are rendered, warmed up, then swapped in."""
        if not self._tasks.busy():
            self._tasks.start("refit", self._refit)

    async def _refit(self) -> None:
        served = self._served.snapshot
        if served is None:
            return
        try:
            snapshot = await self._builder.build(served.commit, served.epoch, served)
        except ProxyError:
            return  # logged by the build; the snapshot served stays
        await self._builder.warm_up(snapshot)
        if self._served.snapshot is served:  # nothing switched meanwhile
            self._served.serve(snapshot)
            await self._state_file.save(self._served.epoch(snapshot))  # its choice of files, for a restart
            log.info("refitted snapshot %s to the window", short(snapshot.commit))

    async def _start(self) -> Snapshot:
        base, saved = await self.first_base()
        snapshot = await self._builder.build(base, saved)
        if self._served.snapshot is None:
            self._served.serve(snapshot)
        await self._state_file.save(self._served.epoch(snapshot))
        return snapshot

    async def _switch(self, head: str | None, prewarm: bool) -> Rebase:
        started = time.monotonic()
        previous = self._served.snapshot
        if previous is not None and previous.commit == head:
            return Rebase(head, head, None, 0.0)  # a switch that finished while this one was asked for
        snapshot = await self._recall(head, previous, near=prewarm)
        if snapshot is None:
            snapshot = await self._builder.build(head, previous.epoch if previous else None, previous)
        usage = await self._builder.warm_up(snapshot) if prewarm else None
        done = self.last_rebase = Rebase(
            previous.commit if previous else None, snapshot.commit, usage, time.monotonic() - started
        )
        if previous is not None:
            self._served.remembered.keep(previous)
        self._served.serve(snapshot)
        self._served.folded = None
        self._metrics.rebases.inc()
        await self._state_file.save(self._served.epoch(snapshot))
        log.info(
            "rebased the snapshot from %s to %s in %.2fs%s",
            short(done.previous),
            short(snapshot.commit),
            done.seconds,
            f"; warm-up cached {usage.cached_tokens} of {usage.prompt_tokens} tokens" if usage else "",
        )
        return done

    async def _recall(self, head: str | None, current: Snapshot | None, near: bool) -> Snapshot | None:
        """A remembered epoch to switch to instead of building: HEAD's own, or (`near`) the one
        whose diff to HEAD is smallest within the budget."""
        remembered = self._served.remembered
        if (own := remembered.take(head)) is not None:
            return own
        if not near or head is None or current is None or not remembered.bases:
            return None
        sizes = await asyncio.to_thread(self._served.reader.net_bytes, remembered.snapshots, head)
        chosen = closest_remembered(sizes, self._served.budget(current))
        if chosen is None:
            return None
        log.info("HEAD %s is close to the remembered snapshot %s: switching back to it", short(head), short(chosen))
        return remembered.take(chosen)
