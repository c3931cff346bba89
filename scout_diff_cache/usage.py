"""Usage as each API reports it: read for the proxy's accounting, and, with `[context] usage =
client`, rewritten so a client's context meter counts only its own conversation.

The three APIs count differently. Chat's `prompt_tokens` and Responses' `input_tokens` include
the cached tokens (`*_tokens_details.cached_tokens`); Anthropic's `input_tokens` excludes cache
reads and writes (`cache_read_input_tokens`, `cache_creation_input_tokens`), so there the
injected tokens come out of the cache reads first, then the cache writes, then `input_tokens`. No
figure ever goes below zero. A field the upstream does not report stays None ("unknown"), never
0: vLLM reports cached tokens only with --enable-prompt-tokens-details.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from .encoding import encode_json

#: A streamed line longer than this with no end in sight is not a usage event; stop buffering it.
MAX_LINE = 256 * 1024


@attrs.frozen
class Usage:
    #: Every token of the prompt, cached or not.
    prompt_tokens: int | None
    cached_tokens: int | None
    #: Tokens the upstream actually processed (llama.cpp's timings.prompt_n).
    processed_tokens: int | None


def _int(mapping: Any, key: str) -> int | None:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_fields(payload: Any) -> dict[str, Any] | None:
    """The usage object of an answer or a streamed event, wherever the API keeps it (chat and
    Messages deltas at the top, Responses events under `response`, `message_start` under `message`)."""
    if not isinstance(payload, dict):
        return None
    for holder in (payload, payload.get("response"), payload.get("message")):
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(usage, dict):
            return usage
    return None


def read_usage(api: str, payload: Any) -> Usage | None:
    """The prompt and cache figures of an answer (or a streamed event), if it carries any."""
    usage = usage_fields(payload)
    timings = payload.get("timings") if isinstance(payload, dict) else None
    if usage is None and not isinstance(timings, dict):
        return None
    if api == "messages":
        parts = [_int(usage, key) for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
        prompt = None if parts[0] is None else sum(part or 0 for part in parts)
        cached = parts[1]
    elif api == "responses":
        prompt = _int(usage, "input_tokens")
        cached = _int(usage.get("input_tokens_details") if usage else None, "cached_tokens")
    else:
        prompt = _int(usage, "prompt_tokens")
        cached = _int(usage.get("prompt_tokens_details") if usage else None, "cached_tokens")
    if cached is None:
        cached = _int(timings, "cache_n")
    return Usage(prompt, cached, _int(timings, "prompt_n"))


def take_out(api: str, usage: dict[str, Any], injected: int) -> None:
    """Remove `injected` prompt tokens from a usage object, in place."""
    if api == "messages":
        left = injected
        for key in ("cache_read_input_tokens", "cache_creation_input_tokens", "input_tokens"):
            value = _int(usage, key)
            if value is not None:
                taken = min(value, left)
                usage[key], left = value - taken, left - taken
        return
    prompt_key, details_key = (
        ("input_tokens", "input_tokens_details") if api == "responses" else ("prompt_tokens", "prompt_tokens_details")
    )
    prompt = _int(usage, prompt_key)
    if prompt is None:
        return
    taken = min(prompt, injected)
    usage[prompt_key] = prompt - taken
    details = usage.get(details_key)
    cached = _int(details, "cached_tokens")
    if isinstance(details, dict) and cached is not None:
        details["cached_tokens"] = min(prompt - taken, max(0, cached - injected))
    total = _int(usage, "total_tokens")
    if total is not None:
        usage["total_tokens"] = max(0, total - taken)


class SseUsage:
    """Reads usage off a relayed SSE stream and, when asked, rewrites or drops the events with it.

    Chat streams are always asked for their usage upstream (`stream_options.include_usage`), so
    the proxy can account for every request; a client that did not ask for that event does not
    get it (`strip`). With nothing to strip or rewrite, chunks pass through as they come;
    otherwise whole events do, and only an event carrying usage is re-encoded.
    """

    def __init__(self, api: str, strip: bool = False, injected: int | None = None) -> None:
        self._api = api
        self._strip = strip
        self._injected = injected or None
        self._whole = strip or self._injected is not None
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk
        cut = data.rfind(b"\n\n" if self._whole else b"\n") + 1
        if self._whole and cut:
            cut += 1
        complete, self._tail = data[:cut], data[cut:]
        if len(self._tail) > MAX_LINE:  # no event is that long: pass it on unread
            complete, self._tail = data, b""
        if not self._whole:
            for line in complete.split(b"\n"):
                self._payload(line)
            return chunk
        return b"".join(self._event(event) for event in complete.split(b"\n\n") if event)

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return rest if self._whole else b""

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        for index, line in enumerate(lines):
            payload = self._payload(line)
            if payload is None:
                continue
            if self._strip and payload.get("choices") == [] and "usage" in payload:
                return b""  # the usage-only chunk the proxy asked for on the client's behalf
            usage = usage_fields(payload)
            if usage is not None and self._injected is not None:
                take_out(self._api, usage, self._injected)
                lines[index] = b"data: " + encode_json(payload)
        return b"\n".join(lines) + b"\n\n"

    def _payload(self, line: bytes) -> dict[str, Any] | None:
        """A data line's JSON when it may carry usage (the figures read as it passes), else None."""
        if not line.startswith(b"data:") or (b'"usage"' not in line and b'"timings"' not in line):
            return None
        try:
            payload = json.loads(line[5:])
        except ValueError:
            return None
        found = read_usage(self._api, payload)
        if found is not None and (found.prompt_tokens is not None or found.cached_tokens is not None):
            self.usage = found
        return payload if isinstance(payload, dict) else None
