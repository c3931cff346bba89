"""Making an epoch's snapshot: the build in a worker thread, timed, counted and logged, and its
warm-up upstream before it is served."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import attrs

from ..errors import ProxyError
from ..git.content import UNREADABLE
from ..git.diff import WorkingDiff
from ..git.epoch import Epoch
from ..git.reader import RepositoryReader
from ..git.repository import short
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from ..usage import Usage
from .fitting import Fitted, Fitting
from .notices import Notices

log = logging.getLogger("scout_diff_cache.context.epochs")  # the epochs' one logger, as before the split

#: Sends a snapshot and diff upstream once, so that its cache holds them (a warm-up).
Warmer = Callable[[Snapshot, WorkingDiff], Awaitable["Usage | None"]]

#: Prepares the fit to the window of a build of a commit, given the choice of the fit before it
#: (None: none to keep): None when no window is known.
Prepare = Callable[[str, "frozenset[str] | None"], Awaitable["Fitting | None"]]

#: Called in the build's thread once a snapshot is built: the server's process-wide tuning
#: (see `runtime.after_build`); library callers leave the process as it is.
AfterBuild = Callable[[], None]


def with_fit(snapshot: Snapshot, fitted: Fitted) -> Snapshot:
    """`snapshot` with what its fit found: its tokens where they were counted, and its parts of the window."""
    tokens = fitted.tokens if fitted.exact else None
    return attrs.evolve(snapshot, tokens=tokens, budget=fitted.split.snapshot, diff_budget=fitted.split.diff)


class Builder:
    """Builds snapshots with a `RepositoryReader` and warms them up with a `Warmer`."""

    def __init__(
        self,
        reader: RepositoryReader,
        metrics: Metrics,
        notices: Notices,
        warmer: Warmer | None = None,
        after_build: AfterBuild | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.reader = reader
        self.warmer = warmer
        self.prepare = prepare
        #: The last build's fit to the window (None: none was made).
        self.fitted: Fitted | None = None
        self.last_error: str | None = None
        self._metrics = metrics
        self._notices = notices
        self._after_build = after_build

    async def build(self, commit: str | None, previous: Epoch | None, reuse: Snapshot | None = None) -> Snapshot:
        self._metrics.snapshot_builds.inc()
        started = time.monotonic()
        fitting = await self._prepare(commit, previous, reuse)
        try:
            snapshot = await asyncio.to_thread(self._build, commit, previous, reuse, fitting)
        except ProxyError as error:
            self.last_error = error.message
            log.error("snapshot build for %s failed: %s", short(commit), error.message)
            raise
        self.last_error = None
        if fitting is not None and fitting.fitted is not None:
            self.fitted = fitting.fitted
            snapshot = with_fit(snapshot, fitting.fitted)
            log.info("snapshot %s fitted to the window: %s", short(commit), fitting.fitted.describe())
        self._metrics.build_seconds.observe(time.monotonic() - started)
        if snapshot.findings:
            self._notices.report(f"snapshot {short(commit)}", snapshot.findings)
        self._notices.note_unreadable(
            (item.path, item.detail) for item in snapshot.left_out if item.reason == UNREADABLE
        )
        log.info(
            "snapshot %s built in %.2fs: %d files inlined, %d bytes, %d left out",
            short(commit),
            time.monotonic() - started,
            snapshot.files,
            snapshot.text_bytes,
            len(snapshot.left_out),
        )
        return snapshot

    async def preview(self, commit: str | None, previous: Epoch | None) -> Snapshot:
        """What a build of `commit` would give, fitted as it would be; nothing counted or kept."""
        fitting = await self._prepare(commit, previous, None)
        snapshot = await asyncio.to_thread(self.reader.build, commit, previous, None, fitting)
        return with_fit(snapshot, fitting.fitted) if fitting is not None and fitting.fitted is not None else snapshot

    async def _prepare(self, commit: str | None, previous: Epoch | None, reuse: Snapshot | None) -> Fitting | None:
        """The fit of a build of `commit`, keeping the choice of the snapshot it follows (or of the
        epoch saved before a restart)."""
        if self.prepare is None or commit is None:
            return None
        chosen = reuse.epoch.over_window if reuse is not None else previous.over_window if previous else None
        return await self.prepare(commit, frozenset(chosen) if chosen is not None else None)

    def _build(
        self, commit: str | None, previous: Epoch | None, reuse: Snapshot | None, fitting: Fitting | None
    ) -> Snapshot:
        snapshot = self.reader.build(commit, previous, reuse, fitting)
        if self._after_build is not None:
            self._after_build()
        return snapshot

    async def warm_now(self, snapshot: Snapshot) -> Usage | None:
        """Send `snapshot` and the current diff upstream once; None without a warmer."""
        if self.warmer is None:
            return None
        return await self.warmer(snapshot, await asyncio.to_thread(self.reader.diff, snapshot))

    async def warm_up(self, snapshot: Snapshot) -> Usage | None:
        """Have the upstream cache the new epoch before it is served; a failure is logged, not fatal."""
        if self.warmer is None:
            return None
        diff = await asyncio.to_thread(self.reader.diff, snapshot)
        try:
            usage = await self.warmer(snapshot, diff)
        except ProxyError as error:
            self._metrics.warmups.inc((("outcome", "failed"),))
            log.warning("warm-up of snapshot %s failed, switching anyway: %s", short(snapshot.commit), error.message)
            return None
        self._metrics.warmups.inc((("outcome", "ok"),))
        return usage
