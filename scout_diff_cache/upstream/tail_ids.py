"""A conversation's ids grown turn by turn on llama.cpp, so its history is never tokenised again.

A request's tail (what the template renders after the snapshot: the working diff, then the
conversation) grows by appending between turns: the conversation layer keeps earlier bytes as
they were. The ids of the longest tail seen before that this one starts with are kept; only the
text after it is new.

Tokenisation is stable only right after a special token: llama.cpp splits text on special tokens
before anything else (`tokenizer_st_partition`), and the text after one is tokenised on its own
either way (SentencePiece's space prefix, where a model has it, goes after every special token
alike; a special token that takes in the spaces beside it, as a few models' do, would break
this, and the check finds it). Plain text is not: Gemma's tokenizer merges across a seam in text.
So the new text is tokenised up to the end of its last special token and kept; what follows it
goes to `/completion` as text, which tokenises it as the whole prompt would.

Which texts are special is learned once per upstream and model from a rendered prompt: its tokens
that appear with special tokens parsed and not without, each confirmed alone (one token when
parsed, not when read as text). `prompt_ids.py` checks the grown ids once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from .client import Upstream
from .tokenizer import ids_json, pieces, text_body, tokens

#: Tails whose ids are kept (per upstream and model), the latest used last: a conversation's
#: longest, so a few dozen conversations going on at once (one forked before its kept tail is
#: tokenised again from the longest tail still kept that it starts with).
KEPT_TAILS = 32


@attrs.frozen
class Grown:
    """A tail as ids up to the end of its last special token (their JSON, without brackets) and the
    text after it."""

    ids: bytes = attrs.field(repr=False)
    rest: str


def stable_cut(text: str, specials: Iterable[str], start: int = 0) -> int:
    """Where the last special token in `text[start:]` ends (`start` if there is none): the text
    before it is tokenised the same alone as in any longer text."""
    return max((at + len(special) for special in specials if (at := text.rfind(special, start)) >= 0), default=start)


def longest_prefix(kept: Iterable[str], text: str) -> str:
    """The longest of the kept texts that `text` starts with ('' for none)."""
    return max((known for known in kept if text.startswith(known)), key=len, default="")


def special_candidates(parsed: Sequence[tuple[int, str]], unparsed: Iterable[int]) -> dict[str, int]:
    """The pieces of a text tokenised with special tokens parsed whose ids do not occur when they are
    not: its special tokens (and maybe text merged differently next to them, to be ruled out)."""
    plain = set(unparsed)
    return {piece: token for token, piece in parsed if token not in plain and piece}


async def special_texts(upstream: Upstream, sample: str) -> tuple[str, ...]:
    """The texts of the special tokens in a rendered prompt, each confirmed alone."""
    parsed = await pieces(upstream, sample, parse_special=True)
    unparsed = [token for token, _ in await pieces(upstream, sample, parse_special=False)]
    found = []
    for piece, token in special_candidates(parsed, unparsed).items():
        alone = await tokens(upstream, text_body(piece, False))
        as_text = await tokens(upstream, text_body(piece, False, parse_special=False))
        if list(alone) == [token] and list(as_text) != [token]:
            found.append(piece)
    return tuple(found)


class TailIds:
    """The ids of the tails seen on one upstream and model, and the texts of its special tokens."""

    def __init__(self) -> None:
        self._kept: dict[str, bytes] = {}
        self._specials: tuple[str, ...] | None = None

    async def grow(self, upstream: Upstream, sample: str, tail: str) -> Grown | None:
        """The tail's ids up to its last special token, with only the text after the longest tail
        seen before tokenised (`sample`: rendered text to learn the special tokens from, the first
        time); None when it holds no special token."""
        if self._specials is None:
            self._specials = await special_texts(upstream, sample)
        known = longest_prefix(self._kept, tail)
        ids = self._kept.get(known, b"")
        cut = stable_cut(tail, self._specials, len(known))
        if cut > len(known):
            new = ids_json(await tokens(upstream, text_body(tail[len(known) : cut], False)))
            self._kept.pop(known, None)  # the longer tail takes its place: a conversation, one entry
            known, ids = tail[:cut], (ids + b"," + new if ids else new)
        if known:
            self._kept.pop(known, None)
            self._kept[known] = ids
            while len(self._kept) > KEPT_TAILS:
                del self._kept[next(iter(self._kept))]
        return Grown(ids, tail[cut:]) if ids else None

    def forget(self) -> None:
        """Drop every tail's ids (they failed a check)."""
        self._kept.clear()
