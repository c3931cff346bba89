"""The warm-ups as the status page tells them: the one under way, with its progress and the time
left estimated from the rate earlier warm-ups prefilled at, and the prompt the last one sent (what
the upstream should hold when a request comes on a new epoch)."""

from __future__ import annotations

import collections
import time

import attrs

from .diagnosis import Prompt
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

    @property
    def done(self) -> float | None:
        """The share prefilled by now at that rate (at most 99%: only the answer says it is over)."""
        return None if self.rate is None or not self.tokens else min(0.99, self.rate * self.elapsed / self.tokens)

    @property
    def left(self) -> float | None:
        """Seconds left at that rate (0 once past the estimate, the warm-up still going)."""
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

    def begin(self, prompt: Prompt, tokens: int) -> float:
        """A warm-up of `prompt` (about `tokens` long) starts; returns its start time."""
        self.warmed, self.started, self.tokens = prompt, time.monotonic(), tokens
        return self.started

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
        return Progress(self.tokens, time.monotonic() - self.started, rate)
