"""The application's own resources: background tasks end at shutdown."""

from __future__ import annotations

import asyncio

from aiohttp import web

from scout_diff_cache.app import _background

#: Writes a config on a free port (with any extra `[server]` settings) and returns its process, not yet started.


async def test_a_background_task_that_swallows_a_cancellation_still_ends_at_shutdown() -> None:
    """As `asyncio.wait_for` does on Python 3.11 when the cancellation meets a finished call."""
    cancellations = 0

    async def stubborn(app: web.Application) -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise

    async with asyncio.timeout(10) as bound:  # a shutdown that would wait forever is cut short
        async with _background(stubborn)(web.Application()):
            await asyncio.sleep(0.05)
    assert not bound.expired() and cancellations == 2
