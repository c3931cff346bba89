"""Command line: `python -m scout_diff_cache [serve|check-config|inspect|rebase|status|systemd-unit]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, default_locations, find_config, load_config, render_config
from .context.epochs import Epochs, Injection, reader_for
from .context.fitting import Fitting, fitting_for
from .errors import ConfigError, ProxyError
from .logs import configure_logging
from .metrics import Metrics
from .report import render_report
from .server import serve
from .shared import SharedTasks
from .status import render_text
from .systemd import Notifier, inherited_sockets, render_socket, render_template, render_unit
from .upstream.client import Upstream, tokenize
from .upstream.counting import TokenCounter
from .upstream.layout import Layout, Layouts
from .upstream.routing import Routing
from .upstream.window import Window, Windows

log = logging.getLogger("scout_diff_cache")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scout-diff-cache",
        description="OpenAI-compatible proxy that puts a stable git snapshot in front of every chat, Responses and Messages request.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands = {
        "serve": "run the proxy (the default)",
        "check-config": "validate the configuration and print it, secrets masked",
        "rebase": "ask the running proxy to move its snapshot to HEAD now",
        "status": "print the running proxy's status: its context, warm-up and where the last prompts' cache broke",
        "systemd-unit": "print a systemd service unit for this interpreter and config file (or its .socket unit)",
        "inspect": "show what would be sent upstream right now, without starting the server",
    }
    for name, summary in subcommands.items():
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP, default=argparse.SUPPRESS)
        if name == "inspect":
            command.add_argument("--show", choices=("snapshot", "diff", "files"), help="print that exact text instead")
        if name == "systemd-unit":
            command.add_argument("--user", action="store_true", help="for `systemctl --user` (default: a system unit)")
            command.add_argument("--socket", action="store_true", help="print the matching .socket unit instead")
            command.add_argument(
                "--template",
                action="store_true",
                help="print scout-diff-cache@.service: instance NAME serves with %%E/scout-diff-cache/NAME.ini",
            )
    return parser.parse_args(argv)


CONFIG_HELP = (
    "the INI file (default: the first of ./scout.ini, $XDG_CONFIG_HOME/scout-diff-cache/scout.ini, "
    "/etc/scout-diff-cache/scout.ini; none: built-in defaults)"
)


def _load(explicit: Path | None) -> Config:
    candidates = default_locations(Path.cwd(), Path.home(), os.environ.get("XDG_CONFIG_HOME"))
    return load_config(find_config(explicit, candidates))


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        config = _load(args.config)
    except ConfigError as error:
        print(f"scout-diff-cache: {error}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(render_config(config), end="")
        return 0
    if args.command == "rebase":
        return request_rebase(config)
    if args.command == "status":
        return print_status(config)
    if args.command == "systemd-unit":
        if args.template:
            print(render_template(user=args.user), end="")
            return 0
        return print_unit(config, user=args.user, socket_unit=args.socket)
    if args.command == "inspect":
        return inspect(config, args.show)
    configure_logging(config.server.log_level, config.server.log_format, os.environ.get("JOURNAL_STREAM"))
    log.info("scout-diff-cache %s; config: %s", __version__, config.source or "none found, using built-in defaults")
    log.info("repository %s; upstream %s", config.repository.path, config.upstream.url)
    try:
        notifier = Notifier.from_environment(os.environ)  # NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
        sockets = inherited_sockets(os.environ)  # LISTEN_PID, LISTEN_FDS: socket activation
        asyncio.run(serve(config, notifier, sockets))
    except OSError as error:
        print(f"scout-diff-cache: cannot serve on {config.server.host}:{config.server.port}: {error}", file=sys.stderr)
        return 1
    return 0


def inspect(config: Config, show: str | None) -> int:
    try:
        preview, layout, window = asyncio.run(preview_upstream(config, layout=show is None))
    except ProxyError as error:
        print(f"scout-diff-cache: {error.message}", file=sys.stderr)
        return 1
    sys.stdout.write(render_report(config, preview, show, layout, window))
    return 0


async def preview_upstream(config: Config, *, layout: bool) -> tuple[Injection, Layout | None, Window]:
    """What a server started now would send, fitted to the window it would learn (its files
    counted by the upstream), with the layout (if asked) and the window it would use."""
    tasks = SharedTasks()
    routing = Routing()
    target = (config.upstream.url, config.upstream.model)
    async with Upstream(lambda: config.upstream, lambda: routing) as upstream:
        windows = Windows(config.upstream.context_window, upstream.about, lambda: target, tasks)
        counter = TokenCounter(partial(tokenize, upstream)).bound(*target, None)

        async def prepare(commit: str, previous: frozenset[str] | None) -> Fitting | None:
            window = (await windows.current()).tokens
            return fitting_for(config, window, counter, commit, previous) if window else None

        preview = await Epochs(reader_for(config), config, Metrics(), prepare=prepare).preview()
        learned = await Layouts(config.context.layout, upstream.probe_systems, tasks).current() if layout else None
        return preview, learned, await windows.current()


def print_unit(config: Config, *, user: bool, socket_unit: bool) -> int:
    if socket_unit:
        print(render_socket(config.server.host, config.server.port), end="")
        return 0
    if config.source is None:
        print("scout-diff-cache: systemd-unit needs a config file (--config PATH) for ExecStart", file=sys.stderr)
        return 2
    unit = render_unit(config.source.resolve(), config.repository.path, config.context.state_dir, user=user)
    print(unit, end="")
    return 0


def ask_proxy(config: Config, path: str, method: str = "GET") -> Any:
    """The JSON answer of the proxy this configuration describes at `path` (with a client key when
    keys are configured); a failure is printed and raised as OSError."""
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.server.port}{path}"
    keys = config.server.api_keys
    headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method=method, headers=headers), timeout=3600
        ) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        print(f"scout-diff-cache: {url}: HTTP {error.code}: {error.read().decode(errors='replace')}", file=sys.stderr)
        raise
    except (urllib.error.URLError, OSError) as error:
        print(f"scout-diff-cache: cannot reach the proxy at {url}: {error}", file=sys.stderr)
        raise


def print_status(config: Config) -> int:
    """GET /status.json and print it; on a terminal, while a warm-up runs, redrawn every second
    (its progress bar) until it ends."""
    redrawn = False
    while True:
        try:
            status = ask_proxy(config, "/status.json")
        except OSError:
            return 1
        running = status["warmup"]["state"] == "running" and sys.stdout.isatty()
        sys.stdout.write(("\x1b[H\x1b[2J" if redrawn or running else "") + render_text(status))
        sys.stdout.flush()
        if not running:
            return 0
        redrawn = True
        time.sleep(1.0)


def request_rebase(config: Config) -> int:
    """POST /admin/rebase to the proxy this configuration describes, and say what it did."""
    try:
        done = ask_proxy(config, "/admin/rebase", "POST")
    except OSError:
        return 1
    if done["previous"] == done["base"]:
        print(f"the snapshot is already at HEAD ({done['base']})")
        return 0
    warmup = done["warmup"] or {}
    print(
        f"rebased the snapshot from {done['previous']} to {done['base']} in {done['seconds']:.2f}s; "
        f"warm-up cached {warmup.get('cached_tokens', 'unknown')} of {warmup.get('prompt_tokens', 'unknown')} prompt tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
