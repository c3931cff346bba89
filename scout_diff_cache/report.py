"""`inspect`: what would be sent upstream right now, so its owner can audit what leaves the machine."""

from __future__ import annotations

import json

from .config import Config
from .context.epochs import Injection
from .context.fitting import split_for
from .context.split import client_room
from .git.content import UNREADABLE
from .git.snapshot import Snapshot
from .upstream.layout import Layout
from .upstream.window import Window

#: A rough, model-independent estimate; real tokenizers give 3 to 5 bytes per token on code.
BYTES_PER_TOKEN = 4
LARGEST = 10


def _content(json_text: bytes) -> str:
    """The text of JSON-encoded text without its quotes."""
    return str(json.loads(b'"' + json_text + b'"'))


def _fit_lines(config: Config, snapshot: Snapshot, window: Window | None) -> list[str]:
    """How the window is shared, what the snapshot takes of it, and what is left to a client."""
    if window is None or window.tokens is None:
        return []
    parts = split_for(config.context, window.tokens)
    counted = f"{snapshot.tokens:,} tokens, counted by the upstream" if snapshot.tokens else "not counted"
    over = len(snapshot.over_window)
    return [
        f"split        {parts.describe()}",
        f"fitted       snapshot {counted}; {over} file{'s' if over != 1 else ''} left out over the window",
        f"client room  {client_room(parts, snapshot.tokens):,} tokens: set your client's context window to this"
        " (see the README's recipes)",
    ]


def render_report(
    config: Config, injection: Injection, show: str | None, layout: Layout | None = None, window: Window | None = None
) -> str:
    snapshot, diff = injection.snapshot, injection.diff
    if show == "snapshot":
        return snapshot.text()
    if show == "diff":
        return _content(diff.json_text)
    if show == "files":
        return "".join(f"{size:>12,}  {path}\n" for path, size in snapshot.inlined)
    head = diff.head or "none (no commits yet)"
    lines = [
        f"repository   {config.repository.path}",
        f"config       {config.source or '(built-in defaults)'}",
        f"base commit  {snapshot.commit or 'none (no commits yet)'}",
        f"HEAD         {head}" + (" (the base)" if diff.head == snapshot.commit else ""),
        f"snapshot     {snapshot.files:,} files inlined, {snapshot.text_bytes:,} bytes, "
        f"~{snapshot.text_bytes // BYTES_PER_TOKEN:,} tokens",
        f"diff         {diff.files:,} file diffs, {diff.text_bytes:,} bytes, ~{diff.text_bytes // BYTES_PER_TOKEN:,} tokens",
        f"(tokens estimated at {BYTES_PER_TOKEN} bytes each; `--show snapshot` or `--show diff` prints the exact text)",
        *([f"layout       {layout.name}: {layout.reason}"] if layout else []),
        *([f"window       {window.describe()}"] if window else []),
        *_fit_lines(config, snapshot, window),
        "",
        "largest files inlined:",
    ]
    largest = sorted(snapshot.inlined, key=lambda item: (-item[1], item[0]))[:LARGEST]
    lines += [f"  {size:>12,}  {path}" for path, size in largest] or ["  (none)"]
    lines += ["", "left out:"]
    left_out = [f"  excluded               {path}" for path in snapshot.excluded]
    left_out += [f"  {item.reason:<22} {item.path} ({item.detail})" for item in snapshot.left_out]
    left_out += [f"  {UNREADABLE:<22} {path} ({why}; in the diff)" for path, why in diff.unreadable]
    lines += left_out or ["  (nothing)"]
    lines += ["", f"secrets found ([security] secrets = {config.security.secrets}; values never shown):"]
    found = [("snapshot", finding) for finding in snapshot.findings] + [("diff", finding) for finding in diff.findings]
    lines += [f"  {where:<9} {finding.path}:{finding.line}  {finding.rule}" for where, finding in found] or ["  (none)"]
    return "\n".join(lines) + "\n"
