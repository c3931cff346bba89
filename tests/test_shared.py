"""Tasks that several callers wait for: shared, shielded from a caller's cancellation, owned."""

from __future__ import annotations

import asyncio
import threading

import pytest

from scout_diff_cache.shared import Coalesced, SharedTasks


async def test_callers_of_one_key_share_one_run() -> None:
    tasks, runs = SharedTasks(), []
    release = asyncio.Event()

    async def build() -> str:
        runs.append(1)
        await release.wait()
        return "built"

    waiting = [asyncio.ensure_future(tasks.join("build", build)) for _ in range(3)]
    await asyncio.sleep(0)
    assert tasks.busy("build") and not tasks.busy("other")
    release.set()
    assert await asyncio.gather(*waiting) == ["built"] * 3 and runs == [1]
    assert not tasks.busy()


async def test_a_caller_that_goes_away_leaves_the_run_to_the_others() -> None:
    tasks = SharedTasks()
    release = asyncio.Event()

    async def build() -> str:
        await release.wait()
        return "built"

    impatient = asyncio.ensure_future(tasks.join("build", build))
    patient = asyncio.ensure_future(tasks.join("build", build))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == "built"
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_close_cancels_what_still_runs() -> None:
    tasks = SharedTasks()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    background = tasks.start("rebase", forever)
    await started.wait()
    await tasks.close()
    assert background.cancelled() and not tasks.busy()


async def test_a_coalesced_read_never_started_before_its_caller_asked() -> None:
    entered, gate = threading.Event(), threading.Event()
    reads: list[int] = []

    def read() -> int:
        entered.set()
        gate.wait(5)
        reads.append(len(reads) + 1)
        return len(reads)

    coalesced = Coalesced(read, SharedTasks())
    first = asyncio.ensure_future(coalesced())
    assert await asyncio.to_thread(entered.wait, 5)  # the first read is running in its thread now
    later = [asyncio.ensure_future(coalesced()) for _ in range(3)]  # asked meanwhile: one more read, shared
    gate.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [2, 2, 2]
    assert reads == [1, 2]
