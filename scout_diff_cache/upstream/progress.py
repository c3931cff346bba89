"""A warm-up's prefill as the upstream reports it while it runs: llama.cpp streams a
`prompt_progress` event (tokens in all, from its cache, processed so far, milliseconds) after each
batch when asked with `return_progress`, long before the one token of the answer."""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs

from ..apis.chat import CHAT
from ..usage import Usage

#: What a streamed warm-up asks for besides the usage at its end.
PROGRESS_FIELDS = {"stream": True, "stream_options": {"include_usage": True}, "return_progress": True}


@attrs.frozen
class Prefill:
    """How far a prefill is: `processed` of `total` tokens (the first `cache` from the cache), in
    `seconds` of the upstream's own time."""

    total: int
    cache: int
    processed: int
    seconds: float

    @property
    def done(self) -> float:
        """The share of the tokens to compute that are computed."""
        todo = self.total - self.cache
        return 1.0 if todo <= 0 else min(1.0, max(0, self.processed - self.cache) / todo)

    @property
    def left(self) -> float | None:
        """Seconds left at the rate this prefill has gone at (None before it has a rate)."""
        computed = self.processed - self.cache
        if computed <= 0 or self.seconds <= 0:
            return None
        return max(0, self.total - self.processed) * self.seconds / computed


#: Told each `Prefill` as it comes.
Report = Callable[[Prefill], None]


def prefill_of(payload: object) -> Prefill | None:
    """The `prompt_progress` of one streamed event, if it has a whole one."""
    progress = payload.get("prompt_progress") if isinstance(payload, dict) else None
    if not isinstance(progress, dict):
        return None
    figures: list[float] = []
    for name in ("total", "cache", "processed", "time_ms"):
        value = progress.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        figures.append(value)
    total, cache, processed, milliseconds = figures
    return Prefill(int(total), int(cache), int(processed), milliseconds / 1000)


class ProgressReader:
    """Reads a streamed warm-up as it comes: each progress event reported, the usage kept."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if not line.startswith(b"data:") or (b'"prompt_progress"' not in line and b'"usage"' not in line):
                continue
            try:
                payload = json.loads(line[5:])
            except ValueError:
                continue
            if (prefill := prefill_of(payload)) is not None:
                self._report(prefill)
            found = CHAT.read_usage(payload)
            if found is not None and found.prompt_tokens is not None:
                self.usage = found
