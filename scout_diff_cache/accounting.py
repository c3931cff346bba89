"""What each exchange cost and how much of it the upstream served from its cache.

A field the upstream does not report stays None ("unknown"), never 0: vLLM reports cached tokens
only with --enable-prompt-tokens-details, and some versions not at all.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

#: A streamed line longer than this with no end in sight is not a usage event; stop buffering it.
MAX_LINE = 256 * 1024


@attrs.frozen
class Usage:
    prompt_tokens: int | None
    cached_tokens: int | None
    #: Tokens the upstream actually processed (llama.cpp's timings.prompt_n).
    processed_tokens: int | None


def _int(mapping: Any, key: str) -> int | None:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(payload: Any) -> Usage | None:
    """Reuse figures from a completion (or a streamed chunk), if it carries any."""
    if not isinstance(payload, dict):
        return None
    usage, timings = payload.get("usage"), payload.get("timings")
    if not isinstance(usage, dict) and not isinstance(timings, dict):
        return None
    cached = _int(usage.get("prompt_tokens_details") if isinstance(usage, dict) else None, "cached_tokens")
    if cached is None:
        cached = _int(timings, "cache_n")
    return Usage(_int(usage, "prompt_tokens"), cached, _int(timings, "prompt_n"))


class SseUsageTap:
    """Watches a relayed SSE stream for the chunk that carries usage, without holding the stream."""

    def __init__(self) -> None:
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE:
            self._tail = b""
        for line in lines:
            if line.startswith(b"data:") and (b'"usage"' in line or b'"timings"' in line):
                try:
                    found = usage_of(json.loads(line[5:]))
                except ValueError:
                    continue
                if found is not None and (found.prompt_tokens is not None or found.cached_tokens is not None):
                    self.usage = found


@attrs.define
class Exchange:
    """The per-request record behind the one log line each request gets."""

    snapshot_commit: str | None = None
    injected_bytes: int = 0
    stream: bool = False
    usage: Usage | None = None
    outcome: str = "ok"

    def describe(self) -> str:
        parts = [f"outcome={self.outcome}"]
        if self.snapshot_commit is not None or self.injected_bytes:
            parts.append(f"snapshot={(self.snapshot_commit or 'none')[:12]} injected={self.injected_bytes}")
        if self.usage is not None:
            parts.append(f"prompt_tokens={_known(self.usage.prompt_tokens)} cached_tokens={_known(self.usage.cached_tokens)}")
        return " ".join(parts)


def _known(value: int | None) -> str:
    return "unknown" if value is None else str(value)
