"""The upstream's own renderer and tokenizer, asked over HTTP: the token-id path trusts no other.

llama.cpp renders a chat body with `/apply-template` and tokenises text with `/tokenize`; vLLM's
`/tokenize` takes a chat body and does both at once. Ids travel as JSON without brackets, encoded
once, so they splice into a body as they are.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Sequence
from typing import Any

from ..encoding import Body, encode_json
from ..errors import UpstreamBadResponse
from .client import MAX_ANSWER, Upstream, json_of


def ids_json(ids: Sequence[int]) -> bytes:
    """The ids as JSON without brackets."""
    return ",".join(map(str, ids)).encode()


def text_body(text: str, add_special: bool, parse_special: bool = True, **extra: Any) -> Body:
    """llama.cpp's `/tokenize` body for text (special tokens parsed, as its prompts are)."""
    fields = {"content": text, "add_special": add_special, "parse_special": parse_special, **extra}
    return Body((encode_json(fields),))


async def rendered(upstream: Upstream, body: Body) -> str:
    """The prompt llama.cpp's template renders from a chat body."""
    _, payload = await upstream.read_json_answer(body, "/apply-template", root=True)
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    if not isinstance(prompt, str):
        raise UpstreamBadResponse("the upstream's /apply-template answer holds no prompt")
    return prompt


async def tokens(upstream: Upstream, body: Body) -> array[int]:
    """The server's tokens for a `/tokenize` body (text, or a chat body on vLLM), as compact ids."""
    data = await _answer(upstream, body)
    packed = await asyncio.to_thread(packed_ids, data)
    if packed is not None:
        return packed
    found = await _parsed(data)
    try:
        return await asyncio.to_thread(array, "i", found)
    except (TypeError, OverflowError):
        raise UpstreamBadResponse("the upstream's /tokenize answer holds tokens that are not ids") from None


async def pieces(upstream: Upstream, text: str, parse_special: bool) -> list[tuple[int, str]]:
    """llama.cpp's tokens for a short text with their pieces (a piece that is not whole UTF-8,
    which llama.cpp gives as bytes, is left out)."""
    found = await _parsed(await _answer(upstream, text_body(text, False, parse_special, with_pieces=True)))
    return [
        (token["id"], token["piece"])
        for token in found
        if isinstance(token, dict) and isinstance(token.get("id"), int) and isinstance(token.get("piece"), str)
    ]


#: The bytes of ids read into packed ids at a time (far longer than an id).
SLICE = 1 << 20
#: Where a compact answer's ids begin.
TOKENS = b'"tokens":['


def packed_ids(data: bytes, step: int = SLICE) -> array[int] | None:
    """The ids of a compact `/tokenize` answer (`"tokens":[1,2,…]`, as llama.cpp, vLLM and SGLang
    write it), read a slice at a time straight into packed ids: parsed as JSON, 10M tokens would
    first be a list of Python ints of about 450 MB. None for any other shape (then parsed as JSON)."""
    start = data.find(TOKENS)
    end = data.find(b"]", start)
    if start < 0 or end < 0:
        return None
    ids, start = array("i"), start + len(TOKENS)
    try:
        while start < end:
            stop = end if end - start <= step else data.rfind(b",", start, start + step)
            if stop <= start:
                return None
            ids.extend(map(int, data[start:stop].split(b",")))
            start = stop + 1
    except (ValueError, OverflowError):
        return None
    return ids


async def _answer(upstream: Upstream, body: Body) -> bytes:
    """A `/tokenize` answer. Its ids take at most about 7 bytes each (6 digits and a comma), and a
    token at least a byte of the text, so it is bounded by the body's own size: a 10M-token
    snapshot's is read too."""
    return await upstream.read_answer(body, "/tokenize", root=True, limit=MAX_ANSWER + 8 * body.length)


async def _parsed(data: bytes) -> list[Any]:
    """The tokens of a `/tokenize` answer, parsed off the loop."""
    payload = await asyncio.to_thread(json_of, data)
    found = payload.get("tokens") if isinstance(payload, dict) else None
    if not isinstance(found, list):
        raise UpstreamBadResponse("the upstream's /tokenize answer holds no tokens")
    return found
