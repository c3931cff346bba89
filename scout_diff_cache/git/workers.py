"""Worker processes for a snapshot's heavy work, so the event loop only ever receives finished bytes.

Python's `re` and `json` hold the GIL for a whole call: scanning or escaping a large file in a
thread still freezes the event loop for that long. So a large tree is rendered in a small process
pool (spawned, never forked: the server has threads; at a lower CPU priority, so that the event
loop is scheduled first when they share the cores), started by the first large build and shut
down with the application. A small tree costs less than starting a process, and a pool that cannot
start (a sandbox without semaphores, say) or that broke is no reason to stop serving: then the
same functions run in the calling thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, TypeVar

import pygit2
from pygit2.enums import ObjectType

from .. import runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Trees with fewer entries are rendered in the calling thread: a pool's start costs more.
POOL_MIN_ENTRIES = 500

#: The largest tree a worker keeps in libgit2's object cache (git/git's largest is about 40 KiB).
TREE_CACHE_LIMIT = 1 << 20

#: How much less CPU priority the worker processes have than the server (see `os.nice`).
WORKER_NICENESS = 10


class InlineExecutor(Executor):
    """Runs each call at once in the calling thread: the pool's stand-in."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # handed to whoever asks the future, as a pool would
            future.set_exception(error)
        return future


class _Pool(ProcessPoolExecutor):
    """Worker processes that hand the memory a call freed back to the system when it ends."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(_trimmed, fn, *args, **kwargs)


def _trimmed(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn`'s result, the heap trimmed after it: an idle worker would otherwise keep the peak of its
    last call (libgit2's caches of a history walk: 55 MiB a worker for git/git, 18 trimmed)."""
    try:
        return fn(*args, **kwargs)
    finally:
        runtime.release_freed_memory()


class Workers:
    """A process pool started on first need, or the calling thread for small or pool-less work."""

    def __init__(self, processes: int | None = None, min_entries: int = POOL_MIN_ENTRIES) -> None:
        self.processes = processes or os.cpu_count() or 1
        self._min_entries = min_entries
        self._pool: _Pool | None = None
        self._unavailable = False
        self._lock = threading.Lock()  # builds run in threads: one pool, however many ask at once

    def executor(self, entries: int) -> Executor:
        """Where to run the work of a tree of `entries`: the pool when it is large and can run."""
        if entries < self._min_entries:
            return InlineExecutor()
        with self._lock:
            if self._pool is None and not self._unavailable:
                try:
                    self._pool = _Pool(
                        self.processes,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_start_worker,
                    )
                except (OSError, NotImplementedError, ImportError) as error:
                    self._unavailable = True
                    log.warning("no worker processes (%s): snapshots are rendered in a thread", error)
            return self._pool or InlineExecutor()

    def discard(self, executor: Executor) -> None:
        """Drop a pool that broke (a worker was killed); the next large build starts a new one."""
        with self._lock:
            if executor is self._pool:
                self._pool = None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes (blocking until they exit)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _start_worker() -> None:
    """A worker yields the cores to the server and frees its large results at once (see `runtime.py`).

    It reads objects as git does: without hashing each one again to check it (libgit2 does by
    default, with collision detection: a third of the time of reading a tree's blobs, a quarter of a
    history walk's), and keeping trees of any size in the object cache (by default only those under
    4 KiB: a walk would read a large repository's root tree from its pack twice per commit).
    """
    os.nice(WORKER_NICENESS)
    runtime.map_large_blocks()
    pygit2.settings.enable_strict_hash_verification(False)
    pygit2.settings.cache_object_limit(ObjectType.TREE, TREE_CACHE_LIMIT)
