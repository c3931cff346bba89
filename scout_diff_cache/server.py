"""Running the application as a service: listen, tell systemd, stop gracefully.

Sockets inherited from systemd (socket activation) are served instead of binding. systemd hears
READY=1 once the sockets listen, a STATUS= line saying what is served, WATCHDOG=1 from the event
loop at half the watchdog interval (so a blocked loop is noticed), and STOPPING=1 on SIGTERM or
SIGINT, after which in-flight requests get `shutdown_grace` to finish. SIGHUP reloads the
configuration (RELOADING=1 with MONOTONIC_USEC=, then READY=1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from . import runtime
from .app import make_app
from .config import Config, load_config, needing_restart
from .errors import ConfigError, ProxyError
from .git.repository import short
from .logs import configure_logging
from .state import build_live, identify, live_key, metrics_key, wiring_key
from .systemd import Notifier

log = logging.getLogger("scout_diff_cache")


def status_line(app: web.Application) -> str:
    config, epochs = app[live_key].config, app[live_key].epochs.status()
    snapshot = epochs.snapshot
    if snapshot is None:
        served = f"snapshot {epochs.state}"
    else:
        served = f"snapshot {short(snapshot.commit)}, {snapshot.text_bytes} bytes"
    upstream = app[metrics_key].last_upstream_outcome
    return f"STATUS=serving {config.repository.path} ({served}) to {config.upstream.url} (last answer: {upstream})"


async def serve(config: Config, notifier: Notifier, inherited: list[socket.socket]) -> None:
    app = make_app(config, after_build=runtime.after_build)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=config.server.shutdown_grace
    )
    await runner.setup()
    runtime.settle()
    if inherited:
        sites: list[web.BaseSite] = [web.SockSite(runner, sock) for sock in inherited]
    else:
        sites = [web.TCPSite(runner, config.server.host, config.server.port)]
    try:
        for site in sites:
            await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("listening on %s", ", ".join(site.name for site in sites))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(reload(app, notifier))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    notifier.notify("READY=1", status_line(app))
    watchdog = asyncio.create_task(_watchdog(notifier, app))
    try:
        await stop.wait()
    finally:
        log.info("stopping: in-flight requests get up to %gs", config.server.shutdown_grace)
        notifier.notify("STOPPING=1")
        for task in (watchdog, *reloads):
            task.cancel()
        await asyncio.gather(watchdog, *reloads, return_exceptions=True)
        await runner.cleanup()
        log.info("stopped")


async def reload(app: web.Application, notifier: Notifier) -> None:
    """SIGHUP: re-read the INI file; a bad one is refused and the running configuration stays.

    Upstream settings, timeouts, logging and context options apply to the next request; streams
    in flight finish as they started. New repository settings get a new snapshot, built (and
    warmed upstream) before it replaces the old one.
    """
    live = app[live_key]
    old = live.config
    notifier.reloading()
    try:
        if old.source is None:
            raise ConfigError("no config file was loaded at startup, so there is nothing to re-read")
        new = load_config(old.source)
    except ConfigError as error:
        log.error("reload refused, the running configuration stays in force: %s", error)
        notifier.notify("READY=1", status_line(app))
        return
    for section, key in needing_restart(old, new):
        log.warning("[%s] %s changed: it takes effect at the next restart", section, key)
    configure_logging(new.server.log_level, new.server.log_format, os.environ.get("JOURNAL_STREAM"))
    fresh = build_live(new, app[wiring_key], live)
    live.take_settings(fresh)
    live.windows.learn_soon()  # another upstream, or the same one answering again
    if fresh.epochs is not live.epochs:
        log.info("repository settings changed: building the new snapshot before switching to it")
        if new.context.inject:
            try:
                await fresh.epochs.start()
                await fresh.epochs.warm_now()
            except ProxyError as error:
                log.warning("preparing the new snapshot failed (%s); switching anyway", error.message)
        await identify(fresh)
        await live.take_repository(fresh).close()
    log.info("reloaded %s", new.source)
    notifier.notify("READY=1", status_line(app))


async def _watchdog(notifier: Notifier, app: web.Application) -> None:
    """WATCHDOG=1 from the event loop itself, with a fresh STATUS= when it changed."""
    if not notifier.active:
        return
    interval = notifier.watchdog_interval or 30.0
    last = ""
    while True:
        status = status_line(app)
        fields = (["WATCHDOG=1"] if notifier.watchdog_interval else []) + ([status] if status != last else [])
        if fields:
            notifier.notify(*fields)
        last = status
        await asyncio.sleep(interval)
