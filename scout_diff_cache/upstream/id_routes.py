"""How each kind of server takes a chat prompt as token ids: where a request rendered with a marker
in the snapshot's place splits, how an epoch's ids are learned and checked, and the body that
carries them.

- llama.cpp renders with `/apply-template` (text: the head before the marker, the tail after it),
  tokenises head + snapshot once, grows the tail's ids up to its last special token from the
  earlier requests' (see `tail_ids.py`), and takes `/completion` with `[ids…, tail ids…, "rest"]`,
  answered in its own format (see `llama_completion.py`);
- vLLM renders and tokenises at once (`/tokenize` with `messages`): the marker's own ids are found
  in the request's, the ids before it are the head, those after it the tail; the epoch's ids are the
  whole prompt's less that tail, and `/v1/chat/completions` takes them all in
  `kv_transfer_params.prompt_token_ids` (the messages are not rendered again; its chat parsers, tools
  included, still read the answer, which is chat's own). vLLM renders a chat body only by
  tokenising it, so a conversation's tail grows from short bodies with its history stood in for
  (see `chat_tails.py`);
- SGLang as vLLM, with the ids in `input_ids` (see `sglang_ids.py`).
"""

from __future__ import annotations

import asyncio
import json
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from ..encoding import Body, Chunk, encode_json, encode_text
from ..errors import UpstreamBadResponse
from .chat_tails import ChatTails
from .client import Upstream
from .llama_completion import ChatFromCompletion, completion_body, text_reason
from .tail_ids import Grown, TailIds
from .tokenizer import ids_json, rendered, text_body, tokens

#: Where the snapshot goes when a request is rendered for its head and tail: text no template
#: changes and no client sends (one that does goes by text: the marker must render once).
MARKER = "\u2063scout-diff-cache snapshot\u2063"
#: Characters of a request's rendered tail (its end: the template's last turns) that llama.cpp's
#: special tokens are learned from, with its head.
SAMPLE = 4096


@attrs.frozen
class Split:
    """A request rendered with the marker in the snapshot's place: what comes before the marker
    (with the commit, the key of an epoch's ids) and after it, as text or ids, and as much of the
    text as ids as earlier requests' let grow."""

    head: str | bytes
    tail: str | array[int] = attrs.field(eq=False)
    grown: Grown | None = attrs.field(default=None, eq=False)
    #: The request's body when its tail's ids were grown (on vLLM and SGLang): not yet tokenised whole.
    unseen: Body | None = attrs.field(default=None, eq=False)

    @property
    def grew(self) -> bool:
        """Whether any of the tail's ids came from earlier requests'."""
        return self.grown is not None or self.unseen is not None


@attrs.frozen
class IdsPrompt:
    """A request for the upstream as ids: where it goes (under the server's root, or its base URL),
    its body, and the translation of its answer for the client, if it needs one."""

    path: str
    body: Body
    root: bool = False
    answers: ChatFromCompletion | None = None


class IdsRoute(Protocol):
    """One kind of server's way to take a chat prompt as ids."""

    def text_reason(self, fields: dict[str, Any]) -> str | None:
        """Why a request with these fields must go by text (None: it can go as ids)."""

    async def split(self, upstream: Upstream, marked: Body) -> Split | None:
        """The request (`marked`: its body with the marker for the snapshot) split at the marker;
        None unless the marker rendered exactly once."""

    async def learn(self, upstream: Upstream, split: Split, whole: Body, snapshot: Chunks) -> array[int] | None:
        """The ids of the prompt up to the snapshot's end, checked on this request (`whole`: its real
        body) against the server's tokens of the whole prompt; None when they differ."""

    async def grown(self, upstream: Upstream, split: Split, check: bool) -> Split | None:
        """The split with its tail's ids grown from earlier requests' where the route can; with
        `check`, None when they differ from the server's tokens of the whole tail."""

    async def whole(self, upstream: Upstream, split: Split) -> Split:
        """The split with none of its tail's ids grown (they failed a check)."""

    def prompt(self, encoded: tuple[bytes, ...], split: Split, fields: dict[str, Any], marked: Body) -> IdsPrompt:
        """The request with the epoch's ids (`encoded`) and its own tail."""


class NoIdsRoute(Exception):
    """What a route finds out about its server only once it asks: that it cannot take ids after
    all (the message says why). Its requests then go by text, counted as the server's."""


Chunks = tuple[Chunk, ...]


def split_at_marker(rendered: str) -> tuple[str, str] | None:
    """The rendered prompt's head and tail around the marker; None unless it appears exactly once."""
    head, found, tail = rendered.partition(MARKER)
    return (head, tail) if found and MARKER not in tail else None


def split_ids(tokens: array[int], marker: array[int]) -> tuple[array[int], array[int]] | None:
    """The ids before and after the marker's own ids; None unless they occur exactly once."""
    data, needle = tokens.tobytes(), marker.tobytes()
    found = [at for at in _occurrences(data, needle) if at % tokens.itemsize == 0]
    if len(found) != 1 or not needle:
        return None
    start = found[0] // tokens.itemsize
    return tokens[:start], tokens[start + len(marker) :]


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0 and needle:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def parity(whole: Sequence[int], ids: Sequence[int], tail: Sequence[int]) -> bool:
    """Whether the ids, then the tail's, are exactly the whole prompt's tokens (and there are ids).
    Compared as packed ids, never as lists of Python ints (10M tokens' would take most of a GB)."""
    whole, ids, tail = (found if isinstance(found, array) else array("i", found) for found in (whole, ids, tail))
    cut = len(ids)
    return cut > 0 and len(whole) == cut + len(tail) and whole[:cut] == ids and whole[cut:] == tail


class LlamaCompletion:
    """llama.cpp: rendered by `/apply-template`, sent to `/completion` (under the server's root),
    each model's tails' ids kept."""

    def __init__(self) -> None:
        self._tails: dict[str, TailIds] = {}

    def text_reason(self, fields: dict[str, Any]) -> str | None:
        return text_reason(fields)

    async def split(self, upstream: Upstream, marked: Body) -> Split | None:
        found = split_at_marker(await rendered(upstream, marked))
        return Split(*found) if found else None

    async def learn(self, upstream: Upstream, split: Split, whole: Body, snapshot: Chunks) -> array[int] | None:
        assert isinstance(split.head, str) and isinstance(split.tail, str)
        opening, closing = b'{"content":"', b'","add_special":true,"parse_special":true}'
        ids = await tokens(upstream, Body((opening, encode_text(split.head), *snapshot, closing)))
        prompt = await rendered(upstream, whole)
        everything = await tokens(upstream, await asyncio.to_thread(text_body, prompt, True))
        own = await tokens(upstream, text_body(split.tail, False))
        return ids if await asyncio.to_thread(parity, everything, ids, own) else None

    async def grown(self, upstream: Upstream, split: Split, check: bool) -> Split | None:
        assert isinstance(split.head, str) and isinstance(split.tail, str)
        tails = self._tails.setdefault(upstream.config.model, TailIds())
        grown = await tails.grow(upstream, split.head + split.tail[-SAMPLE:], split.tail)
        if grown is None:
            return split
        if check and not await _same_tokens(upstream, split.tail, grown):
            tails.forget()
            return None
        return attrs.evolve(split, grown=grown)

    async def whole(self, upstream: Upstream, split: Split) -> Split:
        return attrs.evolve(split, grown=None)

    def prompt(self, encoded: tuple[bytes, ...], split: Split, fields: dict[str, Any], marked: Body) -> IdsPrompt:
        assert isinstance(split.tail, str)
        answers = ChatFromCompletion(str(fields.get("model", "")))
        grown = split.grown
        ids, rest = (encoded, split.tail) if grown is None else ((*encoded, b",", grown.ids), grown.rest)
        return IdsPrompt("/completion", completion_body(ids, rest, fields), True, answers)


async def _same_tokens(upstream: Upstream, tail: str, grown: Grown) -> bool:
    """Whether a tail's grown ids, then its rest's own, are the server's tokens of the whole tail."""
    whole = await tokens(upstream, text_body(tail, False))
    rest = await tokens(upstream, text_body(grown.rest, False))
    ids = await asyncio.to_thread(json.loads, b"[" + grown.ids + b"]")
    return await asyncio.to_thread(parity, whole, ids, rest)


class VllmChat:
    """vLLM: rendered and tokenised by `/tokenize` with `messages`, sent to `/v1/chat/completions`
    with the ids in `kv_transfer_params.prompt_token_ids`; each model's conversations' tails kept."""

    #: The client's field the ids would replace, and the JSON that opens and closes them in the body.
    FIELD, OPENING, CLOSING = "kv_transfer_params", b',"kv_transfer_params":{"prompt_token_ids":[', b"]}}"

    def __init__(self) -> None:
        self._marker: array[int] | None = None
        self._tails: dict[str, ChatTails] = {}
        #: The last body tokenised whole for a check, and its split (the epoch's first request's).
        self._whole: tuple[Body, Split] | None = None

    def text_reason(self, fields: dict[str, Any]) -> str | None:
        return "unmapped field" if self.FIELD in fields else None

    async def _split_ids(self, upstream: Upstream, body: Body) -> tuple[array[int], array[int]] | None:
        """The ids of a chat body's prompt before and after the marker."""
        if self._marker is None:
            alone = {"model": upstream.config.model, "prompt": MARKER, "add_special_tokens": False}
            self._marker = await tokens(upstream, Body((encode_json(alone),)))
        return split_ids(await tokens(upstream, body), self._marker)

    async def split(self, upstream: Upstream, marked: Body) -> Split | None:
        tails = self._tails.setdefault(upstream.config.model, ChatTails())
        found = await tails.split(upstream, marked, MARKER, lambda body: self._split_ids(upstream, body))
        if found is None:
            return None
        kept, grew = found
        return Split(kept.head, kept.tail, unseen=marked if grew else None)

    async def learn(self, upstream: Upstream, split: Split, whole: Body, snapshot: Chunks) -> array[int] | None:
        split = await self.whole(upstream, split)
        assert isinstance(split.head, bytes) and isinstance(split.tail, array)
        everything = await tokens(upstream, whole)
        ids, tail = everything[: len(everything) - len(split.tail)], split.tail
        fits = ids.tobytes().startswith(split.head) and len(ids) * ids.itemsize > len(split.head)
        return ids if fits and await asyncio.to_thread(parity, everything, ids, tail) else None

    async def grown(self, upstream: Upstream, split: Split, check: bool) -> Split | None:
        if split.unseen is None or not check:
            return split  # grown (or not) by the split itself
        if (await self.whole(upstream, split)).tail != split.tail:
            self._tails[upstream.config.model].forget()
            return None
        return split

    async def whole(self, upstream: Upstream, split: Split) -> Split:
        if split.unseen is None:
            return split
        if self._whole is None or self._whole[0] is not split.unseen:
            found = await self._split_ids(upstream, split.unseen)
            if found is None:
                raise UpstreamBadResponse("the snapshot's marker rendered otherwise in the whole request")
            self._whole = split.unseen, Split(found[0].tobytes(), found[1])
        return self._whole[1]

    def prompt(self, encoded: tuple[bytes, ...], split: Split, fields: dict[str, Any], marked: Body) -> IdsPrompt:
        assert isinstance(split.tail, array)
        tail = b"," + ids_json(split.tail) if split.tail else b""
        ids = (self.OPENING, *encoded, tail, self.CLOSING)
        return IdsPrompt("/chat/completions", Body((*marked.chunks[:-1], *ids)))
