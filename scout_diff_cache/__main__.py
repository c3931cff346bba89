"""Command line: `python -m scout_diff_cache [serve|check-config] [--config PATH]`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import web

from . import __version__
from .app import make_app
from .config import Config, default_locations, find_config, load_config, render_config
from .errors import ConfigError

log = logging.getLogger("scout_diff_cache")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, metavar="PATH", help="the INI file (default: first of ./scout.ini, "
                        "$XDG_CONFIG_HOME/scout-diff-cache/scout.ini, /etc/scout-diff-cache/scout.ini)")
    parser = argparse.ArgumentParser(
        prog="scout-diff-cache", parents=[config],
        description="OpenAI-compatible proxy that puts a stable git snapshot in front of every chat request.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", parents=[config], help="run the proxy (the default)")
    commands.add_parser("check-config", parents=[config], help="validate the configuration and print it, secrets masked")
    commands.add_parser("rebase", parents=[config], help="ask the running proxy to move its snapshot to HEAD now")
    return parser.parse_args(argv)


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
    serve(config)
    return 0


def request_rebase(config: Config) -> int:
    """POST /admin/rebase to the proxy this configuration describes, and say what it did."""
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.server.port}/admin/rebase"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=3600) as response:
            done = json.load(response)
    except urllib.error.HTTPError as error:
        print(f"scout-diff-cache: {url}: HTTP {error.code}: {error.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"scout-diff-cache: cannot reach the proxy at {url}: {error}", file=sys.stderr)
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


def serve(config: Config) -> None:
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info("scout-diff-cache %s; config: %s", __version__, config.source or "none found, using built-in defaults")
    log.info(
        "listening on http://%s:%d; repository %s; upstream %s",
        config.server.host, config.server.port, config.repository.path, config.upstream.url,
    )
    web.run_app(
        make_app(config),
        host=config.server.host,
        port=config.server.port,
        shutdown_timeout=config.server.shutdown_grace,
        handler_cancellation=True,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    sys.exit(main())
