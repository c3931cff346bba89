"""Fitting one snapshot build to its part of the upstream's window.

A build renders every file, then asks its `Fitting` (in the build's thread) which to leave out:
each inlinable section is counted in the upstream's tokens (once per content, see
`upstream/counting.py`), and if the whole does not fit the snapshot's part of the window (see
`split.py`), `selection.select` chooses, by `[repository] priorities` and keeping the previous
epoch's choice. A window that is not known cuts nothing: the warm-up and the upstream's own error
say so, and the window is asked for again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import attrs

from ..config import Config, ContextConfig
from ..encoding import digest, encode_text
from ..git.content import spell
from ..git.priority import ranks
from ..git.sections import Section
from .selection import Candidate, select
from .split import Split, split


class Counter(Protocol):
    """The upstream's token counts, by digest of the encoded text (see `upstream/counting.py`)."""

    async def unknown(self, keys: Sequence[bytes]) -> set[bytes]:
        """The keys not counted yet: only their texts are sent."""

    async def count(
        self, keys: Sequence[bytes], texts: Mapping[bytes, bytes | memoryview], sizes: Sequence[int]
    ) -> tuple[Sequence[int], bool]:
        """The tokens of each key (`texts` those not counted yet, JSON-encoded; `sizes` their bytes), and
        whether every count is exact."""


#: Each path's rank under the priorities (blocking: it reads `.gitattributes`).
Rank = Callable[[list[str]], dict[str, int]]

T = TypeVar("T")

#: Tokens kept for the end of the snapshot: its last line and the count of entries not included.
TAIL = 64


@attrs.frozen
class Fitted:
    """What a fit found: the snapshot's tokens as sent, against its part of the window."""

    split: Split
    tokens: int
    #: Files left out to fit.
    left_out: int
    #: Every count came from the upstream's tokenizer (else some were estimated from bytes).
    exact: bool

    def describe(self) -> str:
        exact = "" if self.exact else " (partly estimated from bytes)"
        cut = f"; {self.left_out} files left out over the window" if self.left_out else ""
        return (
            f"{self.tokens:,} of {self.split.snapshot:,} snapshot tokens{exact}{cut} "
            f"(window {self.split.window:,}: {self.split.describe()})"
        )


class Fitting:
    """One build's fit, called from the build's thread; the counting runs on `loop`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        split: Split,
        counter: Counter,
        rank: Rank,
        previous: frozenset[str] | None,
    ) -> None:
        self._loop = loop
        self._split = split
        self._counter = counter
        self._rank = rank
        self._previous = previous
        self.fitted: Fitted | None = None

    def __call__(self, sections: list[Section], header: str) -> frozenset[str]:
        encoded = [encode_text(header), *(section.encoded for section in sections)]
        keys = [digest(piece) for piece in encoded]
        unknown = self._on_loop(self._counter.unknown(keys))
        texts = {key: piece for key, piece in zip(keys, encoded, strict=True) if key in unknown}
        sizes = [len(header.encode("utf-8")), *(section.cost for section in sections)]
        counted, exact = self._on_loop(self._counter.count(keys, texts, sizes))
        fixed, tokens = counted[0] + TAIL, list(counted[1:])
        budget = self._split.snapshot - fixed
        if sum(tokens) <= budget and not self._previous:
            self.fitted = Fitted(self._split, fixed + sum(tokens), 0, exact)
            return frozenset()
        sizes = [section.cost for section in sections]
        rate = sum(tokens) / max(1, sum(sizes))
        ranks = self._rank([section.path for section in sections])
        candidates = [
            Candidate(section.path, ranks[section.path], count, _listing(section, rate))
            for section, count in zip(sections, tokens, strict=True)
        ]
        out = select(candidates, max(0, budget), self._previous)
        used = sum(item.listed if item.path in out else item.tokens for item in candidates)
        self.fitted = Fitted(self._split, fixed + used, len(out), exact)
        return out

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the event loop and wait for it here, in the build's thread."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()


def _listing(section: Section, rate: float) -> int:
    """The tokens of the line that lists a file left out over the window."""
    line = f"over the window: {spell(section.path)} ({section.size} bytes)\n"
    return math.ceil(len(line.encode("utf-8")) * rate) + 1


def split_for(terms: ContextConfig, window: int) -> Split:
    """How `window` tokens are shared under the configured parts."""
    return split(window, terms.answer_tokens, terms.conversation_tokens, terms.diff_tokens)


def fitting_for(config: Config, window: int, counter: Counter, commit: str, previous: frozenset[str] | None) -> Fitting:
    """The fit of a build of `commit` to `window` (on the running loop), keeping the `previous`
    choice of files left out, if there is one."""
    repository = config.repository
    rank = partial(ranks, repository.path, commit, priorities=repository.priorities)
    return Fitting(asyncio.get_running_loop(), split_for(config.context, window), counter, rank, previous)
