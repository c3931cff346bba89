"""The warm-ups as the status page tells them: the one under way, with its progress and the time
left (as the upstream reports them where it does, llama.cpp's `prompt_progress`; else estimated
from the rate earlier warm-ups prefilled at), and the prompt the last one sent (what the upstream
should hold when a request comes on a new epoch)."""

from __future__ import annotations

import collections
import time

import attrs

from .diagnosis import Prompt
from .upstream.progress import Prefill
from .usage import Usage

#: Warm-ups that prefilled fewer tokens say more about latency than rate: not measured.
MIN_MEASURED_TOKENS = 512
#: Rates kept (tokens per second), the oldest first out.
RATES = 8


@attrs.frozen
class Progress:
    """A warm-up under way: what it prefills, for how long it has run, and the time it should take."""

    tokens: int
    elapsed: float
    #: Tokens per second measured on earlier warm-ups (None: none measured yet).
    rate: float | None
    #: The upstream's own report of this prefill, if it sends one.
    prefill: Prefill | None = None

    @property
    def source(self) -> str:
        return "as the upstream reports it" if self.prefill is not None else "at earlier warm-ups' rate"

    @property
    def done(self) -> float | None:
        """The share prefilled by now (at most 99%: only the answer says it is over)."""
        if self.prefill is not None:
            return min(0.99, self.prefill.done)
        return None if self.rate is None or not self.tokens else min(0.99, self.rate * self.elapsed / self.tokens)

    @property
    def left(self) -> float | None:
        """Seconds left (0 once past the estimate, the warm-up still going)."""
        if self.prefill is not None and self.prefill.left is not None:
            return self.prefill.left
        return None if self.rate is None else max(0.0, self.tokens / self.rate - self.elapsed)


@attrs.define
class WarmUps:
    """Warm-ups begun and ended; the rates of the last few that prefilled enough to measure."""

    #: The prompt the last warm-up sent, and when it began and what it is prefilling while it runs.
    warmed: Prompt | None = None
    started: float | None = None
    tokens: int = 0
    rates: collections.deque[float] = attrs.Factory(lambda: collections.deque(maxlen=RATES))
    #: The last warm-up's figures: tokens prefilled and seconds.
    last: tuple[int, float] | None = None
    #: What the upstream last reported of the warm-up under way.
    prefill: Prefill | None = None

    def begin(self, prompt: Prompt, tokens: int) -> float:
        """A warm-up of `prompt` (about `tokens` long) starts; returns its start time."""
        self.warmed, self.started, self.tokens, self.prefill = prompt, time.monotonic(), tokens, None
        return self.started

    def report(self, started: float, prefill: Prefill) -> None:
        """What the upstream says of the warm-up begun at `started`, while it runs."""
        if self.started == started:
            self.prefill = prefill

    def end(self, started: float, usage: Usage | None) -> None:
        """The warm-up begun at `started` is over (`usage`: what the upstream said it cost)."""
        seconds = time.monotonic() - started
        if self.started == started:
            self.started = None
        if usage is None or usage.prompt_tokens is None:
            return
        prefilled = usage.processed_tokens
        if prefilled is None:
            prefilled = usage.prompt_tokens - (usage.cached_tokens or 0)
        self.last = (prefilled, seconds)
        if prefilled >= MIN_MEASURED_TOKENS and seconds > 0:
            self.rates.append(prefilled / seconds)

    def progress(self) -> Progress | None:
        """The warm-up under way, if one is."""
        if self.started is None:
            return None
        rate = sum(self.rates) / len(self.rates) if self.rates else None
        tokens = self.tokens if self.prefill is None else self.prefill.total - self.prefill.cache
        return Progress(tokens, time.monotonic() - self.started, rate, self.prefill)
