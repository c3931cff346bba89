"""The repository context of a request: the cached snapshot and a fresh working diff.

Blocking libgit2 work runs in threads. Snapshots are built once per base commit, and requests that
arrive during a build wait for that build. The working diff is computed per request, but callers
that ask while one computation is queued share it; a computation never started before its caller
asked, so no caller gets a diff older than its own request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Generic, TypeVar

import attrs

from .config import RepositoryConfig
from .diff import WorkingDiff, working_diff
from .patterns import compile_patterns
from .repository import ContentRules, head_commit, open_repository, short
from .snapshot import Snapshot, build_snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")


class Coalesced(Generic[T]):
    """Runs `fn` in a thread for callers; those who ask while a run is queued share it."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._running: asyncio.Task[T] | None = None
        self._queued: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._queued is None:
            self._queued = asyncio.create_task(self._after(self._running))
            self._queued.add_done_callback(_consume)
        return await asyncio.shield(self._queued)

    async def _after(self, previous: asyncio.Task[T] | None) -> T:
        if previous is not None:
            await asyncio.wait([previous])
        self._running, self._queued = self._queued, None
        return await asyncio.to_thread(self._fn)


def _consume(task: asyncio.Task[object]) -> None:
    """Mark a failure as seen: the callers who awaited it have already had it raised."""
    if not task.cancelled():
        task.exception()


@attrs.frozen
class Context:
    snapshot: Snapshot
    diff: WorkingDiff


class RepositoryContext:
    def __init__(self, config: RepositoryConfig) -> None:
        self._config = config
        self._rules = ContentRules(compile_patterns(config.exclude), config.max_file_bytes)
        self._diff = Coalesced(self._read_working_diff)
        self._head = Coalesced(self._read_head)
        self.snapshot: Snapshot | None = None
        self._builds: dict[str | None, asyncio.Task[Snapshot]] = {}
        self.builds_started = 0
        self.last_error: str | None = None

    async def current(self) -> Context:
        diff = await self._diff()
        return Context(await self.snapshot_for(diff.base), diff)

    async def head(self) -> str | None:
        return await self._head()

    @property
    def state(self) -> str:
        if self._builds:
            return "building"
        if self.last_error is not None:
            return "failed"
        return "ready" if self.snapshot is not None else "not built"

    async def snapshot_for(self, commit: str | None) -> Snapshot:
        if self.snapshot is not None and self.snapshot.commit == commit:
            return self.snapshot
        return await asyncio.shield(self.build_in_background(commit))

    def build_in_background(self, commit: str | None) -> asyncio.Task[Snapshot]:
        """Start the build of `commit`'s snapshot, or return the one already under way."""
        task = self._builds.get(commit)
        if task is None:
            task = asyncio.create_task(self._build(commit))
            self._builds[commit] = task
            task.add_done_callback(_consume)
        return task

    async def _build(self, commit: str | None) -> Snapshot:
        self.builds_started += 1
        started = time.monotonic()
        config = self._config
        try:
            snapshot = await asyncio.to_thread(
                build_snapshot, config.path, commit, self._rules, config.max_snapshot_bytes
            )
        except Exception as error:
            self.last_error = str(error)
            log.error("snapshot build for %s failed: %s", short(commit), error)
            raise
        finally:
            del self._builds[commit]
        self.snapshot, self.last_error = snapshot, None
        log.info(
            "snapshot %s built in %.2fs: %d files inlined, %d bytes, %d left out",
            short(commit), time.monotonic() - started, snapshot.files, snapshot.text_bytes, len(snapshot.left_out),
        )
        return snapshot

    def _read_working_diff(self) -> WorkingDiff:
        repo = open_repository(self._config.path)
        return working_diff(repo, head_commit(repo), self._rules)

    def _read_head(self) -> str | None:
        commit = head_commit(open_repository(self._config.path))
        return str(commit.id) if commit is not None else None
