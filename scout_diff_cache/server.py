"""Running the application as a service: listen, tell systemd, stop gracefully.

Sockets inherited from systemd (socket activation) are served instead of binding. systemd hears
READY=1 once the sockets listen, a STATUS= line saying what is served, WATCHDOG=1 from the event
loop at half the watchdog interval (so a blocked loop is noticed), and STOPPING=1 on SIGTERM or
SIGINT, after which in-flight requests get `shutdown_grace` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

from aiohttp import web

from .app import make_app
from .app_keys import context_key
from .config import Config
from .repository import short
from .systemd import Notifier

log = logging.getLogger("scout_diff_cache")


def status_line(app: web.Application, config: Config) -> str:
    context = app[context_key]
    snapshot = context.snapshot
    if snapshot is None:
        served = f"snapshot {context.state}"
    else:
        served = f"snapshot {short(snapshot.commit)}, {snapshot.text_bytes} bytes"
    return f"STATUS=serving {config.repository.path} ({served}) to {config.upstream.url}"


async def serve(config: Config, notifier: Notifier, inherited: list[socket.socket]) -> None:
    app = make_app(config)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=config.server.shutdown_grace
    )
    await runner.setup()
    if inherited:
        sites: list[web.BaseSite] = [web.SockSite(runner, sock) for sock in inherited]
    else:
        sites = [web.TCPSite(runner, config.server.host, config.server.port)]
    for site in sites:
        await site.start()
    log.info("listening on %s", ", ".join(site.name for site in sites))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier.notify("READY=1", status_line(app, config))
    watchdog = asyncio.create_task(_watchdog(notifier, app, config))
    try:
        await stop.wait()
    finally:
        log.info("stopping: in-flight requests get up to %gs", config.server.shutdown_grace)
        notifier.notify("STOPPING=1")
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await runner.cleanup()
        log.info("stopped")


async def _watchdog(notifier: Notifier, app: web.Application, config: Config) -> None:
    """WATCHDOG=1 from the event loop itself, with a fresh STATUS= when it changed."""
    if not notifier.active:
        return
    interval = notifier.watchdog_interval or 30.0
    last = ""
    while True:
        status = status_line(app, config)
        fields = (["WATCHDOG=1"] if notifier.watchdog_interval else []) + ([status] if status != last else [])
        if fields:
            notifier.notify(*fields)
        last = status
        await asyncio.sleep(interval)
