"""Which files the snapshot inlines when the repository does not fit its part of the window: pure.

The upstream caches the snapshot up to its first changed byte, and a file left out or taken back
changes the snapshot from its place on. So the choice must not move when an unrelated file changes:
it is made once in priority order (most important first; see `[repository] priorities`) and then
kept. A later epoch keeps every choice of the previous one while the files chosen still fit,
leaves out the least important ones only when they no longer do, and takes a file back only when
it fits with room to spare (`TAKE_BACK`): a file that grows or shrinks a little changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

#: A first choice fills the budget up to this share, so files may grow a little before anything
#: must be left out...
FILL = 0.95
#: ...and a file left out is taken back only when it fits under this share: after a first choice,
#: only a change of a twentieth of the budget can bring one back.
TAKE_BACK = 0.9


@attrs.frozen
class Candidate:
    """A file the snapshot could inline: its rank (0 first) and its tokens, with its listing's
    tokens when it is left out (its line under "not included")."""

    path: str
    rank: int
    tokens: int
    listed: int = 0

    @property
    def order(self) -> tuple[int, str]:
        return self.rank, self.path


def select(candidates: Iterable[Candidate], budget: int, previous: frozenset[str] | None = None) -> frozenset[str]:
    """The paths to leave out so that the rest fits `budget` tokens, given the paths the previous
    epoch left out (None: no previous choice to keep)."""
    ranked = sorted(candidates, key=lambda item: item.order)
    if not previous and sum(item.tokens for item in ranked) <= budget:
        return frozenset()
    if previous is None:  # a first choice: most important first, while they fit
        out = {item.path for item in ranked}
        _take_back(ranked, out, budget * FILL)
        return frozenset(out)
    out = {item.path for item in ranked if item.path in previous}
    used = _used(ranked, out)
    for item in reversed(ranked):  # the least important first, until the rest fits
        if used <= budget:
            break
        if item.path not in out:
            out.add(item.path)
            used += item.listed - item.tokens
    _take_back(ranked, out, budget * TAKE_BACK)
    return frozenset(out)


def _used(ranked: list[Candidate], out: set[str]) -> int:
    return sum(item.listed if item.path in out else item.tokens for item in ranked)


def _take_back(ranked: list[Candidate], out: set[str], limit: float) -> None:
    """Take files of `out` back, most important first, while each fits under `limit`."""
    used = _used(ranked, out)
    for item in ranked:
        if item.path in out and used + item.tokens - item.listed <= limit:
            out.discard(item.path)
            used += item.tokens - item.listed
