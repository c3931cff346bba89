"""Usage as each API reports it: read for the proxy's accounting, and, with `[context] usage =
client`, rewritten so a client's context meter counts only its own conversation.

The three APIs count differently. Chat's `prompt_tokens` and Responses' `input_tokens` include
the cached tokens (`*_tokens_details.cached_tokens`); Anthropic's `input_tokens` excludes cache
reads and writes (`cache_read_input_tokens`, `cache_creation_input_tokens`), so there the
injected tokens come out of the cache reads first, then the cache writes, then `input_tokens`. No
figure ever goes below zero. A field the upstream does not report stays None ("unknown"), never
0: vLLM reports cached tokens only with --enable-prompt-tokens-details.

The two ways of counting are pure functions here (`take_out_included`, `take_out_in_order`); each
client dialect (`apis/`) says which one it is and names its fields, and `SseUsage` is handed the
dialect of the stream it reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

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


def int_field(mapping: Any, key: str) -> int | None:
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


class UsageReader(Protocol):
    """How one API reports usage (each client dialect is one)."""

    def read_usage(self, payload: Any) -> Usage | None: ...

    def take_out(self, usage: dict[str, Any], injected: int) -> None: ...


#: Reads (prompt tokens, cached tokens) off an API's usage object (None: the answer had none).
PromptFigures = Callable[[dict[str, Any] | None], tuple[int | None, int | None]]


def read_counted(payload: Any, prompt: PromptFigures) -> Usage | None:
    """The prompt and cache figures of an answer (or a streamed event), if it carries any: `prompt`
    reads the API's usage object; llama.cpp's `timings` fill in what it lacks."""
    usage = usage_fields(payload)
    timings = payload.get("timings") if isinstance(payload, dict) else None
    if usage is None and not isinstance(timings, dict):
        return None
    tokens, cached = prompt(usage)
    if cached is None:
        cached = int_field(timings, "cache_n")
    return Usage(tokens, cached, int_field(timings, "prompt_n"))


def included_figures(prompt_key: str, details_key: str) -> PromptFigures:
    """Figures of an API whose prompt count includes the cached tokens (chat, Responses)."""

    def figures(usage: dict[str, Any] | None) -> tuple[int | None, int | None]:
        return int_field(usage, prompt_key), int_field(usage.get(details_key) if usage else None, "cached_tokens")

    return figures


def take_out_included(usage: dict[str, Any], injected: int, prompt_key: str, details_key: str) -> None:
    """Remove `injected` prompt tokens, in place, where the prompt count includes the cached ones."""
    prompt = int_field(usage, prompt_key)
    if prompt is None:
        return
    taken = min(prompt, injected)
    usage[prompt_key] = prompt - taken
    details = usage.get(details_key)
    cached = int_field(details, "cached_tokens")
    if isinstance(details, dict) and cached is not None:
        details["cached_tokens"] = min(prompt - taken, max(0, cached - injected))
    total = int_field(usage, "total_tokens")
    if total is not None:
        usage["total_tokens"] = max(0, total - taken)


def take_out_in_order(usage: dict[str, Any], injected: int, keys: tuple[str, ...]) -> None:
    """Remove `injected` prompt tokens, in place, from separately counted figures, `keys` first to last."""
    left = injected
    for key in keys:
        value = int_field(usage, key)
        if value is not None:
            taken = min(value, left)
            usage[key], left = value - taken, left - taken


class SseUsage:
    """Reads usage off a relayed SSE stream and, when asked, rewrites or drops the events with it.

    Chat streams are always asked for their usage upstream (`stream_options.include_usage`), so
    the proxy can account for every request; a client that did not ask for that event does not
    get it (`strip`). With nothing to strip or rewrite, chunks pass through as they come;
    otherwise whole events do, and only an event carrying usage is re-encoded.
    """

    def __init__(self, api: UsageReader, strip: bool = False, injected: int | None = None) -> None:
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
                self._api.take_out(usage, self._injected)
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
        found = self._api.read_usage(payload)
        if found is not None and (found.prompt_tokens is not None or found.cached_tokens is not None):
            self.usage = found
        return payload if isinstance(payload, dict) else None
