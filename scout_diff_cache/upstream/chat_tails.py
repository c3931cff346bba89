"""A conversation's ids grown turn by turn on servers that render a chat body only by tokenising
it (vLLM, SGLang), so its history is not tokenised again.

These servers give no rendered text, only ids, so the new part of a request cannot be cut from its
text as on llama.cpp (`tail_ids.py`). Instead, the messages a request shares with one seen before
are *stood in for*: each long text among them (a content, a reasoning, a call's arguments, the
text after the snapshot's marker) is replaced by its first and last characters around an ellipsis,
and everything else (roles, names, calls, tools, fields) is kept. Two short bodies are tokenised at once: the earlier request with its
messages stood in for, and this one with the same stand-ins and its new messages in full. Where their
ids first differ, the new text begins. The request's ids are then the earlier request's own up to
the last special token before that point, and this request's after it.

Why that is the whole prompt's tokenisation:
- a special token splits the text before anything else (Hugging Face tokenizers split on their
  added tokens first), so the ids after one depend only on the text after it;
- the earlier request's ids and its stood-in ones must end with the same ids from that special
  token on: the same ids are the same text, so no stood-in text lies after the cut;
- what the template renders after the cut does not depend on the stood-in texts' middles, as long
  as the template reads a message's text only where it writes it (or tests how it begins or ends:
  Qwen's template tests for `<tool_response>`, so the ends are kept). A template that changes
  earlier turns when a new one comes (Qwen3 drops the reasoning of turns before the last question)
  changes the stood-in rendering too: the two bodies part before the cut, and the request is
  tokenised whole.

A special token is one that stays one token whatever is next to it: alone, twice in a row, and
after and before a letter, a space and a line break. Each id is asked once per model. The first
grown request of an epoch is checked against the server's tokens of its whole tail
(`prompt_ids.py`), and a mismatch sends that epoch's tails whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs

from ..encoding import Body, encode_json
from .client import Upstream, url_of
from .tail_ids import KEPT_TAILS
from .tokenizer import tokens

#: Characters kept at each end of a text a stand-in replaces, and the longest text kept whole.
EDGE, SHORT = 16, 48
#: How far before the point where the two bodies part a special token is looked for.
SCAN = 64
#: What a special token must stay one token next to.
NEIGHBOURS = ("a", " ", "\n")
#: The fields of a message whose texts are stood in for (beside `content`).
TEXTS = ("reasoning_content", "reasoning")

#: The ids of a chat body's prompt before and after the marker (None: it did not render once).
SplitIds = Callable[[Body], Awaitable["tuple[array[int], array[int]] | None"]]


def stand_in(text: str) -> str:
    """A long text's first and last characters around an ellipsis; a short one as it is."""
    return text if len(text) <= SHORT else f"{text[:EDGE]}\u2026{text[-EDGE:]}"


def stood_in(message: Any) -> Any:
    """A message with its long texts stood in for, all else kept."""
    if not isinstance(message, dict):
        return message
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = stand_in(content)
    elif isinstance(content, list):
        out["content"] = [_part(part) for part in content]
    for name in TEXTS:
        if isinstance(message.get(name), str):
            out[name] = stand_in(message[name])
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        out["tool_calls"] = [_call(call) for call in calls]
    return out


def _part(part: Any) -> Any:
    return (
        {**part, "text": stand_in(part["text"])}
        if isinstance(part, dict) and isinstance(part.get("text"), str)
        else part
    )


def _call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return call if len(function["arguments"]) <= SHORT else {**call, "function": {**function, "arguments": "{}"}}


def after_marker(message: Any, marker: str) -> Any:
    """The message that holds the marker with its text after the marker stood in for (the working
    diff, in the strict layout); what precedes the marker is the head, kept whole."""
    content = message.get("content")
    if not isinstance(content, str) or marker not in content:
        return message
    end = content.index(marker) + len(marker)
    return {**message, "content": content[:end] + stand_in(content[end:])}


def prefix_keys(fields: dict[str, Any], messages: Sequence[Any]) -> list[bytes]:
    """A key for each prefix of the messages (the first: none of them) with the body's other fields."""
    key = hashlib.blake2b(encode_json(fields), digest_size=16).digest()
    keys = [key]
    for message in messages:
        key = hashlib.blake2b(key + encode_json(message), digest_size=16).digest()
        keys.append(key)
    return keys


def holding(messages: Sequence[Any], marker: str) -> int | None:
    """The index of the message that holds the marker."""
    for index, message in enumerate(messages):
        if marker in json.dumps(message.get("content") if isinstance(message, dict) else None, ensure_ascii=False):
            return index
    return None


def parting(earlier: array[int], later: array[int]) -> int:
    """How many ids two sequences share from their start (found by halving: each comparison of
    slices runs in C)."""
    low, high = 0, min(len(earlier), len(later))
    while low < high:
        middle = (low + high + 1) // 2
        if earlier[low:middle] == later[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def spliced(own: array[int], stood: array[int], later: array[int], cut: int) -> array[int] | None:
    """The earlier request's own ids up to the cut (`cut` counts in its stood-in ids, `stood`), then
    the later request's stood-in ids after it; None unless its own ids end with the stood-in ids
    from the special token before the cut on (so no stood-in text lies after it)."""
    at = len(own) - (len(stood) - cut)
    if cut < 1 or at < 1 or own[at - 1 :] != stood[cut - 1 :]:
        return None
    return own[:at] + later[cut:]


@attrs.frozen
class Kept:
    """A request's ids before the marker (as bytes) and after it."""

    head: bytes
    tail: array[int] = attrs.field(eq=False, repr=False)


class ChatTails:
    """The tails' ids of the conversations seen on one upstream and model, and which ids are
    special tokens."""

    def __init__(self) -> None:
        self._kept: dict[bytes, Kept] = {}
        self._special: dict[int, bool] = {}

    async def split(
        self, upstream: Upstream, marked: Body, marker: str, split_ids: SplitIds
    ) -> tuple[Kept, bool] | None:
        """The request's ids before and after the marker, grown from an earlier request's where it
        shares messages with one (then True); None unless the marker rendered once."""
        body = await asyncio.to_thread(json.loads, b"".join(marked.chunks))
        messages = body.pop("messages")
        keys = await asyncio.to_thread(prefix_keys, body, messages)
        found = await self._grown(upstream, body, messages, keys, marker, split_ids)
        grew = found is not None
        if found is None:
            ids = await split_ids(marked)
            found = None if ids is None else Kept(ids[0].tobytes(), ids[1])
        if found is not None:
            self._keep(keys, found)
        return None if found is None else (found, grew)

    async def _grown(
        self,
        upstream: Upstream,
        fields: dict[str, Any],
        messages: list[Any],
        keys: list[bytes],
        marker: str,
        split_ids: SplitIds,
    ) -> Kept | None:
        """The request's ids from the longest earlier request it starts with; None if none is kept
        or the cut cannot be proven."""
        at = holding(messages, marker)
        shared = next((count for count in range(len(messages), 0, -1) if keys[count] in self._kept), 0)
        if at is None or shared <= at:
            return None
        kept = self._kept[keys[shared]]
        if shared == len(messages):
            return kept
        standing = [*messages[:at], after_marker(messages[at], marker), *map(stood_in, messages[at + 1 : shared])]
        earlier, later = await asyncio.gather(
            split_ids(Body((encode_json({**fields, "messages": standing}),))),
            split_ids(Body((encode_json({**fields, "messages": [*standing, *messages[shared:]]}),))),
        )
        if earlier is None or later is None or earlier[0] != later[0] or earlier[0].tobytes() != kept.head:
            return None
        stood, grown = earlier[1], later[1]
        cut = await self._cut(upstream, stood, parting(stood, grown))
        tail = None if cut is None else spliced(kept.tail, stood, grown, cut)
        return None if tail is None else Kept(kept.head, tail)

    async def _cut(self, upstream: Upstream, ids: array[int], shared: int) -> int | None:
        """Just after the last special token among the first `shared` ids (looked for among the
        last SCAN of them)."""
        for cut in range(shared, max(shared - SCAN, 0), -1):
            token = ids[cut - 1]
            if token not in self._special:
                self._special[token] = await is_special(upstream, token)
            if self._special[token]:
                return cut
        return None

    def _keep(self, keys: list[bytes], found: Kept) -> None:
        """Keep a request's ids in place of the earlier request's it grew from: one entry a
        conversation, the latest used last."""
        for key in keys:
            self._kept.pop(key, None)
        self._kept[keys[-1]] = found
        while len(self._kept) > KEPT_TAILS:
            del self._kept[next(iter(self._kept))]

    def forget(self) -> None:
        """Drop every tail's ids (they failed a check)."""
        self._kept.clear()


async def is_special(upstream: Upstream, token: int) -> bool:
    """Whether a token stays one token whatever is next to it (see the module's docstring)."""
    text = await _text_of(upstream, token)
    if not text:
        return False
    probes = (text, text + text, *(f"{n}{text}" for n in NEIGHBOURS), *(f"{text}{n}" for n in NEIGHBOURS))
    found = await asyncio.gather(*(_plain(upstream, probe) for probe in probes))
    alone, twice, after, before = found[0], found[1], found[2 : 2 + len(NEIGHBOURS)], found[2 + len(NEIGHBOURS) :]
    return (
        list(alone) == [token] and list(twice) == [token, token] and _ends(after, token, -1) and _ends(before, token, 0)
    )


def _ends(found: Iterable[array[int]], token: int, where: int) -> bool:
    return all(len(ids) > 1 and ids[where] == token for ids in found)


async def _plain(upstream: Upstream, text: str) -> array[int]:
    """The server's tokens of a text, no special token added."""
    body = {"model": upstream.config.model, "prompt": text, "add_special_tokens": False}
    return await tokens(upstream, Body((encode_json(body),)))


async def _text_of(upstream: Upstream, token: int) -> str | None:
    """A token's text, as the server's `/detokenize` gives it (vLLM names it `prompt`, SGLang `text`)."""
    body = {"model": upstream.config.model, "tokens": [token]}
    answer = await upstream.about("POST", url_of(upstream.config, "/detokenize", root=True), body)
    text = answer.get("prompt", answer.get("text")) if isinstance(answer, dict) else None
    return text if isinstance(text, str) else None
