"""The snapshot's part of the prompt as token ids, tokenised once per epoch by the upstream itself.

A chat request makes the server render its template over the whole prompt and tokenise it again,
snapshot included, before it even looks at its cache. With `[upstream] prompt = tokens` (or
`auto`) a chat request the server can take as ids goes as `[ids…, "tail"]`:

- the request is rendered by the server's own renderer (llama.cpp's `/apply-template`) with a
  short marker where the snapshot goes, so the render costs what the conversation costs: the
  text before the marker is the template's head, the text after it the tail sent as text;
- the ids of head + snapshot are asked of the server's tokenizer once per epoch and head (the
  template's inputs before the cut), and kept compactly (`array('i')`), their JSON encoded once;
- the first request of that epoch and head checks them: the ids, then the tail's own, must be
  exactly the server's tokenisation of the whole prompt as it renders it with the real snapshot.
  The cut sits right after the snapshot's last line: before a special token in most templates
  (stable by construction), in plain text in Gemma's (where this check is what proves it). A
  mismatch sends the epoch by text (the same tokens, so the same cache), logged and counted.

What goes by text anyway, counted by why: the Responses and Messages APIs and chat requests with
tools (their clients need the chat parser), fields `/completion` does not take, servers other
than llama.cpp, a marker the template did not render once, and an upstream error on the way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..apis.validation import ClientRequest
from ..encoding import Body, Chunk, encode_json, encode_text
from ..errors import ProxyError, UpstreamBadResponse
from ..git.snapshot import CHUNK_BYTES, Snapshot
from ..metrics import Metrics
from ..shared import SharedTasks
from .client import Upstream
from .llama_completion import ChatFromCompletion, completion_body, text_reason

log = logging.getLogger(__name__)

#: Where the snapshot goes when a request is rendered for its head and tail: text no template
#: changes and no client sends (one that does goes by text: the marker must render once).
MARKER = "\u2063scout-diff-cache snapshot\u2063"
#: Epochs (and heads) whose ids are kept, the latest last.
KEPT = 4

#: An upstream body with the given encoded snapshot text in place (the request's own, or the marker).
BodyWith = Callable[[tuple[Chunk, ...]], Body]


@attrs.frozen
class SnapshotIds:
    """The token ids of the prompt up to the snapshot's end, and their JSON (comma-separated, in chunks)."""

    ids: array[int] = attrs.field(eq=False, repr=False)
    encoded: tuple[bytes, ...] = attrs.field(eq=False, repr=False)


@attrs.frozen
class IdsPrompt:
    """A request for the upstream as ids: where it goes (under the server's root), its body, and
    the translation of its answer for the client."""

    path: str
    body: Body
    answers: ChatFromCompletion


def split_at_marker(rendered: str) -> tuple[str, str] | None:
    """The rendered prompt's head and tail around the marker; None unless it appears exactly once."""
    head, found, tail = rendered.partition(MARKER)
    return (head, tail) if found and MARKER not in tail else None


def encoded_ids(ids: Sequence[int]) -> tuple[bytes, ...]:
    """The ids as JSON without brackets, in chunks of about CHUNK_BYTES that join as they are."""
    step = max(1, CHUNK_BYTES // 8)
    return tuple(
        (b"," if start else b"") + ",".join(map(str, ids[start : start + step])).encode()
        for start in range(0, len(ids), step)
    )


def parity(whole: Sequence[int], ids: Sequence[int], tail: Sequence[int]) -> bool:
    """Whether the ids, then the tail's, are exactly the whole prompt's tokens (and there are ids)."""
    return bool(ids) and list(whole) == [*ids, *tail]


def is_llama_cpp(props: Any) -> bool:
    """llama.cpp's `/props` names its default generation settings; no other server has the route."""
    return isinstance(props, dict) and isinstance(props.get("default_generation_settings"), dict)


class PromptIds:
    """The ids of each epoch (and head) on each upstream, learned by the first request that needs
    them while the others wait for the same round; and the count of each path a request took."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._tasks = SharedTasks()
        self._kept: dict[tuple[str, ...], SnapshotIds | None] = {}
        self._servers: dict[str, bool] = {}

    async def close(self) -> None:
        await self._tasks.close()

    def count(self, path: str, reason: str) -> None:
        self._metrics.prompts.inc((("path", path), ("reason", reason)))

    async def prompt(
        self, upstream: Upstream, client: ClientRequest, body_with: BodyWith, snapshot: Snapshot
    ) -> IdsPrompt | None:
        """The request as ids, or None when it goes by text (counted, with why)."""
        fields = _fields(client)
        reason = text_reason(fields)
        if reason is None and not await self._takes_ids(upstream):
            reason = "server"
        if reason is not None:
            self.count("text", reason)
            return None
        try:
            split = split_at_marker(await _rendered(upstream, body_with((encode_text(MARKER),))))
            if split is None:
                self.count("text", "marker")
                return None
            head, tail = split
            config = upstream.config
            key = (config.url, config.model, snapshot.commit or "", head)
            found = await self._tasks.join(key, lambda: self._learn(upstream, key, snapshot, body_with, tail))
        except ProxyError as error:
            log.warning("prompt by text: the upstream failed while it was asked for token ids: %s", error.message)
            self.count("text", "upstream error")
            return None
        if found is None:
            self.count("text", "parity")
            return None
        self.count("tokens", "ok")
        answers = ChatFromCompletion(str(fields.get("model", config.model)))
        return IdsPrompt("/completion", completion_body(found.encoded, tail, fields), answers)

    async def _takes_ids(self, upstream: Upstream) -> bool:
        """Whether the upstream is a llama.cpp server (asked once per URL, again if it was away)."""
        url = upstream.config.url
        if url not in self._servers:
            try:
                self._servers[url] = is_llama_cpp(await upstream.about("GET", upstream.url_of("/props", root=True)))
            except ProxyError:
                return False
            if not self._servers[url]:
                _tell(upstream, "prompt by text: the upstream is not a llama.cpp server (no /props)")
        return self._servers[url]

    async def _learn(
        self, upstream: Upstream, key: tuple[str, ...], snapshot: Snapshot, body_with: BodyWith, tail: str
    ) -> SnapshotIds | None:
        """The epoch's ids (head + snapshot), checked against the whole prompt; None: they differ."""
        if key in self._kept:
            self._kept[key] = self._kept.pop(key)
            return self._kept[key]
        head = key[-1]
        opening, closing = b'{"content":"', b'","add_special":true,"parse_special":true}'
        ids = await _tokens(upstream, Body((opening, encode_text(head), *snapshot.json_text, closing)))
        rendered = await _rendered(upstream, body_with(snapshot.json_text))
        whole = await _tokens(upstream, await asyncio.to_thread(_tokenize_body, rendered, True))
        own = await _tokens(upstream, _tokenize_body(tail, False))
        checked = await asyncio.to_thread(parity, whole, ids, own)
        self._metrics.prompt_checks.inc((("outcome", "match" if checked else "mismatch"),))
        found = SnapshotIds(ids, await asyncio.to_thread(encoded_ids, ids)) if checked else None
        if found is None:
            _tell(upstream, f"prompt by text for epoch {key[2][:12]}: its token ids differ from the whole prompt's")
        else:
            log.info("prompt by token ids for epoch %s: %d tokens, checked", key[2][:12], len(ids))
        self._kept[key] = found
        while len(self._kept) > KEPT:
            del self._kept[next(iter(self._kept))]
        return found


def _fields(client: ClientRequest) -> dict[str, Any]:
    """The client's fields other than its messages (a few, small: decoded per request)."""
    fields: dict[str, Any] = json.loads(b"{" + client.fields + b"}")
    return fields


def _tell(upstream: Upstream, message: str) -> None:
    """A fallback to text: a warning when tokens were asked for, else (auto) a note."""
    log.log(logging.WARNING if upstream.config.prompt == "tokens" else logging.INFO, message)


def _tokenize_body(text: str, add_special: bool) -> Body:
    return Body((encode_json({"content": text, "add_special": add_special, "parse_special": True}),))


async def _rendered(upstream: Upstream, body: Body) -> str:
    """The prompt the server's template renders from a chat body."""
    _, payload = await upstream.read_json_answer(body, "/apply-template", root=True)
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    if not isinstance(prompt, str):
        raise UpstreamBadResponse("the upstream's /apply-template answer holds no prompt")
    return prompt


async def _tokens(upstream: Upstream, body: Body) -> array[int]:
    """The server's tokens of a `/tokenize` body, as compact ids."""
    _, payload = await upstream.read_json_answer(body, "/tokenize", root=True)
    tokens = payload.get("tokens") if isinstance(payload, dict) else None
    if not isinstance(tokens, list):
        raise UpstreamBadResponse("the upstream's /tokenize answer holds no tokens")
    try:
        return await asyncio.to_thread(array, "i", tokens)
    except TypeError:
        raise UpstreamBadResponse("the upstream's /tokenize answer holds tokens that are not ids") from None
