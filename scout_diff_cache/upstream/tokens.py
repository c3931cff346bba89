"""How many tokens the injected context is, as the upstream itself counts them.

`[context] usage = client` takes the injected tokens out of what clients are told, so the count
must be the upstream's own, not a guess from bytes. Every warm-up teaches it: the warm-up's prompt
(snapshot, working diff, a one-line question) less the same question sent alone is exactly what
the injection adds, template tokens included. A request whose injected text is the warmed one
gets that count exactly; where its bytes differ (edits since the warm-up, changes inserted in a
conversation) the difference is counted at the measured tokens per byte, off by a few tokens per
KiB of difference. An epoch never warmed (a remembered one) is counted at the latest measured rate.

Counts are kept per upstream URL and model, then per commit: another model has another tokenizer
and template, so a reload that points the proxy elsewhere measures again (and one that points it
back finds its counts still there), while a warm-up under way when the reload came finishes
teaching the upstream it was sent to.
"""

from __future__ import annotations

import attrs

#: Counts kept: the epochs a conversation may still be on.
KEPT = 8
#: Upstreams (URL and model) whose counts are kept: the current one and a few a reload left.
KEPT_UPSTREAMS = 4


@attrs.frozen
class Count:
    """`tokens` measured for `text_bytes` bytes of injected text."""

    tokens: int
    text_bytes: int

    @property
    def rate(self) -> float:
        """Tokens per byte."""
        return self.tokens / self.text_bytes if self.text_bytes else 0.0

    def estimate(self, text_bytes: int) -> int:
        return max(0, round(self.tokens + (text_bytes - self.text_bytes) * self.rate))


class InjectedTokens:
    """The counts of each upstream (URL and model) the proxy was pointed at, the latest last."""

    def __init__(self) -> None:
        self._upstreams: dict[tuple[str, str], UpstreamTokens] = {}

    def of(self, url: str, model: str) -> UpstreamTokens:
        """The counts measured on `model` at `url` (none yet, if it is new)."""
        found = self._upstreams.pop((url, model), None) or UpstreamTokens()
        self._upstreams[(url, model)] = found
        while len(self._upstreams) > KEPT_UPSTREAMS:
            del self._upstreams[next(iter(self._upstreams))]
        return found


class UpstreamTokens:
    """One upstream's measured counts by snapshot commit, the latest last; and the bare question's count."""

    def __init__(self) -> None:
        self._counts: dict[str | None, Count] = {}
        #: Epochs whose warm-up reported no prompt tokens: not measured again (an upstream that
        #: reports no usage would otherwise be warmed on every request).
        self._unmeasurable: set[str | None] = set()
        #: Prompt tokens of the warm-up question alone (None: not measured yet).
        self.bare: int | None = None

    def learn(self, commit: str | None, text_bytes: int, tokens: int) -> None:
        self._counts.pop(commit, None)
        self._counts[commit] = Count(max(0, tokens), text_bytes)
        while len(self._counts) > KEPT:
            del self._counts[next(iter(self._counts))]

    @property
    def rate(self) -> float | None:
        """Tokens per byte of injected text, as the latest warm-up measured (None: none did)."""
        latest = next(reversed(self._counts.values()), None)
        return latest.rate if latest is not None and latest.rate else None

    def unmeasurable(self, commit: str | None) -> None:
        self._unmeasurable.add(commit)

    def known(self, commit: str | None) -> bool:
        """Whether `commit`'s epoch was measured (or cannot be)."""
        return commit in self._counts or commit in self._unmeasurable

    def count(self, commit: str | None, text_bytes: int) -> int | None:
        """The injected tokens of a request on `commit` injecting `text_bytes`; None: not measured."""
        found = self._counts.get(commit)
        if found is not None:
            return found.estimate(text_bytes)
        if not self._counts:
            return None
        return round(text_bytes * next(reversed(self._counts.values())).rate)
