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


class SseUsageFilter:
    """Reads usage off a relayed SSE stream and, when asked, drops the usage-only event.

    Streams are always asked for their usage upstream (`stream_options.include_usage`), so the
    proxy can account for every request; a client that did not ask for that event does not get
    it. Without stripping, chunks pass through as they come; with it, whole events do.
    """

    def __init__(self, strip: bool) -> None:
        self._strip = strip
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk
        cut = data.rfind(b"\n\n" if self._strip else b"\n") + 1
        if self._strip and cut:
            cut += 1
        complete, self._tail = data[:cut], data[cut:]
        if len(self._tail) > MAX_LINE:  # no event is that long: pass it on unread
            complete, self._tail = data, b""
        if not self._strip:
            self._read_usage(complete.split(b"\n"))
            return chunk
        kept = [event for event in complete.split(b"\n\n") if event and not self._usage_only(event)]
        return b"".join(event + b"\n\n" for event in kept)

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return rest if self._strip else b""

    def _usage_only(self, event: bytes) -> bool:
        payload = self._read_usage(event.split(b"\n"))
        return isinstance(payload, dict) and payload.get("choices") == [] and "usage" in payload

    def _read_usage(self, lines: list[bytes]) -> Any:
        payload = None
        for line in lines:
            if line.startswith(b"data:") and (b'"usage"' in line or b'"timings"' in line):
                try:
                    payload = json.loads(line[5:])
                except ValueError:
                    continue
                found = usage_of(payload)
                if found is not None and (found.prompt_tokens is not None or found.cached_tokens is not None):
                    self.usage = found
        return payload


@attrs.define
class Totals:
    """Running sums since start, for the metrics endpoint."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    snapshot_tokens: float = 0.0
    snapshot_tokens_cached: float = 0.0

    def add(self, exchange: Exchange) -> None:
        self.requests += 1
        usage = exchange.usage
        if usage is None or usage.prompt_tokens is None or usage.cached_tokens is None:
            return
        self.prompt_tokens += usage.prompt_tokens
        self.cached_tokens += usage.cached_tokens
        expected = exchange.expected_snapshot_tokens()
        if expected:
            self.snapshot_tokens += expected
            self.snapshot_tokens_cached += min(usage.cached_tokens, expected)


@attrs.define
class Exchange:
    """The per-request record behind the one log line each request gets."""

    snapshot_commit: str | None = None
    snapshot_bytes: int = 0
    diff_bytes: int = 0
    #: The client's messages as encoded (close to their text's size).
    client_bytes: int = 0
    stream: bool = False
    #: A chat request that went (or tried to go) upstream: its outcome tells how the upstream is.
    to_upstream: bool = False
    #: What the request did to its conversation (new, continued, afresh), or "off".
    conversation: str | None = None
    usage: Usage | None = None
    first_byte_seconds: float | None = None
    outcome: str = "ok"

    def expected_snapshot_tokens(self) -> float | None:
        """The snapshot's share of the prompt tokens, estimated by its share of the bytes."""
        total = self.snapshot_bytes + self.diff_bytes + self.client_bytes
        if self.usage is None or self.usage.prompt_tokens is None or not self.snapshot_bytes:
            return None
        return self.usage.prompt_tokens * self.snapshot_bytes / total

    def describe(self) -> str:
        parts = [f"outcome={self.outcome}"] + (["stream"] if self.stream else [])
        if self.snapshot_bytes:
            injected = self.snapshot_bytes + self.diff_bytes
            parts.append(f"snapshot={(self.snapshot_commit or 'none')[:12]} injected={injected}")
        if self.conversation:
            parts.append(f"conversation={self.conversation}")
        if self.usage is not None:
            parts.append(
                f"prompt_tokens={_known(self.usage.prompt_tokens)} cached_tokens={_known(self.usage.cached_tokens)}"
            )
            expected = self.expected_snapshot_tokens()
            if expected and self.usage.cached_tokens is not None:
                parts.append(f"snapshot_cached={min(1.0, self.usage.cached_tokens / expected):.0%}")
        return " ".join(parts)


def _known(value: int | None) -> str:
    return "unknown" if value is None else str(value)
