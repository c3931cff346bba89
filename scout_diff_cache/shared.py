"""Work that several callers wait for at once: one task per key, shielded, owned, shared.

A caller that goes away (a client hung up) must not cancel a snapshot build that other requests
are waiting for, and nothing started on the application's behalf may outlive it. So every such
task is created here, awaited through `asyncio.shield`, and cancelled by `close()` at cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SharedTasks:
    """Tasks by key: callers that ask for a key while its task runs await that same task."""

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[object]] = {}

    def busy(self, key: Hashable | None = None) -> bool:
        return bool(self._tasks) if key is None else key in self._tasks

    def start(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """The running task for `key`, or a new one made by `make`."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task  # type: ignore[return-value]

    async def join(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """Await the task for `key` (started if need be); cancelling the caller leaves it running."""
        return await asyncio.shield(self.start(key, make))

    def release(self, key: Hashable) -> None:
        """Let the next `start(key)` make a new task, while the current one runs on."""
        self._tasks.pop(key, None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _finished(self, key: Hashable, task: asyncio.Task[object]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # seen: the callers who awaited it have had it raised


class Coalesced(Generic[T]):
    """Runs `fn` in a thread for callers: those who ask while a run is queued share it, and a run
    never started before its caller asked (a running one may have read the repository too early)."""

    def __init__(self, fn: Callable[[], T], tasks: SharedTasks) -> None:
        self._fn = fn
        self._tasks = tasks
        self._running: asyncio.Task[Any] | None = None

    async def __call__(self) -> T:
        return await self._tasks.join(self, self._next)

    async def _next(self) -> T:
        if self._running is not None:
            await asyncio.wait([self._running])
        self._tasks.release(self)  # running now: later callers queue the next run
        self._running = asyncio.current_task()
        return await asyncio.to_thread(self._fn)


class Learned(Generic[T]):
    """A value configured, or learned from the upstream once it answers, and learned again after it
    was forgotten (the upstream was unreachable: what comes back may differ). Callers that ask while
    it is being learned wait for that one round; subclasses say how to learn it (`_ask`: None when
    nothing could be learned this time)."""

    def __init__(self, forced: T | None, unlearned: T, tasks: SharedTasks) -> None:
        self._forced = forced
        self._unlearned = unlearned
        self._tasks = tasks
        self._learned: T | None = None

    @property
    def known(self) -> T:
        """The value now, without asking anything."""
        return self._forced or self._learned or self._unlearned

    @property
    def learned(self) -> T | None:
        """What the upstream told, once it has."""
        return self._learned

    async def current(self) -> T:
        """The value, learned first if it is not known yet."""
        if self._forced is None and self._learned is None:
            await self._tasks.join(self, self._learn)
        return self.known

    def learn_soon(self) -> None:
        """Learn it in the background if it is not known."""
        if self._forced is None and self._learned is None:
            self._tasks.start(self, self._learn)

    def forget(self) -> None:
        self._learned = None

    async def _learn(self) -> None:
        self._learned = await self._ask()

    async def _ask(self) -> T | None:
        raise NotImplementedError
