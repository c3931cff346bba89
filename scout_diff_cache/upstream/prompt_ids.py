"""The snapshot's part of the prompt as token ids, tokenised once per epoch by the upstream itself.

A chat request makes the server render its template over the whole prompt and tokenise it again,
snapshot included, before it even looks at its cache. With `[upstream] prompt = tokens` (or
`auto`) a chat request the server can take as ids goes as ids (see `id_routes.py` for each server):

- the request is rendered by the server's own renderer with a short marker where the snapshot
  goes, so the render costs what the conversation costs: what comes before the marker is the
  template's head, what comes after it the tail;
- the ids of head + snapshot are learned once per epoch and head (the template's inputs before
  the cut), kept compactly (`array('i')`), their JSON encoded once and spliced into every request;
- the request that learns them checks them: the ids, then the tail's own, must be exactly the
  server's tokens of the whole prompt as it renders it with the real snapshot. The cut sits right
  after the snapshot's last line: before a special token in most templates (stable by
  construction), in plain text in Gemma's (where this check is what proves it). A mismatch sends
  the epoch by text (the same tokens, so the same cache), logged and counted;
- a conversation's ids grow turn by turn (see `tail_ids.py` for llama.cpp, `chat_tails.py` for
  vLLM and SGLang): its history is not tokenised again. The first request of an epoch whose tail
  goes partly as ids checks them against the server's tokens of the whole tail (the ids before it
  are checked as above); a mismatch sends the tails of that epoch whole, logged and counted.

What goes by text anyway, counted by why: the Responses and Messages APIs (`api`), fields a route
cannot carry (`tools` on llama.cpp, whose `/completion` has no chat parser; `unmapped field`), a
server with no such route (`server`), a marker the template did not render once (`marker`), ids
that failed the check (`parity`) and an upstream error on the way (`upstream error`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..apis.validation import ClientRequest
from ..encoding import Body, Chunk, encode_text
from ..errors import ProxyError
from ..git.snapshot import CHUNK_BYTES, Snapshot
from ..metrics import Metrics
from ..shared import SharedTasks
from .client import Upstream, url_of
from .id_routes import MARKER, IdsPrompt, IdsRoute, LlamaCompletion, NoIdsRoute, Split, VllmChat
from .sglang_ids import SglangChat
from .tokenizer import ids_json

log = logging.getLogger(__name__)

#: Epochs (and heads) whose ids are kept, the latest last.
KEPT = 4

#: An upstream body with the given encoded snapshot text in place (the request's own, or the marker).
BodyWith = Callable[[tuple[Chunk, ...]], Body]


def encoded_ids(ids: Sequence[int]) -> tuple[bytes, ...]:
    """The ids as JSON without brackets, in chunks of about CHUNK_BYTES that join as they are."""
    step = max(1, CHUNK_BYTES // 8)
    return tuple((b"," if start else b"") + ids_json(ids[start : start + step]) for start in range(0, len(ids), step))


def route_for(props: Any, models: Any) -> IdsRoute | None:
    """The way the upstream takes ids: llama.cpp's `/props` names its default generation settings,
    vLLM's and SGLang's `/v1/models` say their models are owned by vllm or sglang; None for any
    other server."""
    if isinstance(props, dict) and isinstance(props.get("default_generation_settings"), dict):
        return LlamaCompletion()
    entries = models.get("data") if isinstance(models, dict) else None
    owners = {e.get("owned_by") for e in entries if isinstance(e, dict)} if isinstance(entries, list) else set()
    if "vllm" in owners:
        return VllmChat()
    if "sglang" in owners:
        return SglangChat()
    return None


class PromptIds:
    """The ids of each epoch (and head) on each upstream, learned by the first request that needs
    them while the others wait for the same round, whether their tails' grown ids passed the
    check (absent: not checked yet); and the count of each path a request took."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._tasks = SharedTasks()
        self._kept: dict[tuple[object, ...], tuple[bytes, ...] | None] = {}
        self._grows: dict[tuple[object, ...], bool] = {}
        self._routes: dict[str, IdsRoute | None] = {}

    async def close(self) -> None:
        await self._tasks.close()

    def count(self, path: str, reason: str) -> None:
        self._metrics.prompts.inc((("path", path), ("reason", reason)))

    async def prompt(
        self, upstream: Upstream, client: ClientRequest, body_with: BodyWith, snapshot: Snapshot
    ) -> IdsPrompt | None:
        """The request as ids, or None when it goes by text (counted, with why)."""
        fields: dict[str, Any] = json.loads(b"{" + client.fields + b"}")  # a few small fields
        try:
            route = await self._route(upstream)
            reason = "server" if route is None else route.text_reason(fields)
            if route is None or reason is not None:
                self.count("text", reason or "server")
                return None
            marked = body_with((encode_text(MARKER),))
            split = await route.split(upstream, marked)
            if split is None:
                self.count("text", "marker")
                return None
            config = upstream.config
            key = (config.url, config.model, snapshot.commit or "", split.head)
            found = await self._tasks.join(key, lambda: self._learn(upstream, route, key, split, body_with, snapshot))
            grown = split if found is None else await self._grown(upstream, route, key, split, _named(snapshot))
        except NoIdsRoute as refusal:
            self._routes[upstream.config.url] = None
            _tell(upstream, f"prompt by text: the upstream cannot take token ids: {refusal}")
            self.count("text", "server")
            return None
        except ProxyError as error:
            log.warning("prompt by text: the upstream failed while it was asked for token ids: %s", error.message)
            self.count("text", "upstream error")
            return None
        if found is None:
            self.count("text", "parity")
            return None
        self.count("tokens", "ok")
        return route.prompt(found, grown, fields, marked)

    async def _grown(
        self, upstream: Upstream, route: IdsRoute, key: tuple[object, ...], split: Split, epoch: str
    ) -> Split:
        """The split with its tail's ids grown, unless they failed this epoch's check (the first
        request that has them checks them)."""
        grows = self._grows.get(key)
        if grows is False:
            return await route.whole(upstream, split)
        grown = await route.grown(upstream, split, check=grows is None)
        if grown is not None and (grows or not grown.grew):
            return grown
        outcome = "conversation mismatch" if grown is None else "conversation match"
        self._metrics.prompt_checks.inc((("outcome", outcome),))
        if key in self._kept:  # not yet let go for a newer epoch
            self._grows[key] = grown is not None
        if grown is None:
            _tell(upstream, f"conversations by text for epoch {epoch}: their grown token ids differ from the tail's")
            return await route.whole(upstream, split)
        log.info("conversations' token ids grown for epoch %s, checked", epoch)
        return grown

    async def _route(self, upstream: Upstream) -> IdsRoute | None:
        """How the upstream takes ids (asked once per URL; again if it could not be reached)."""
        url = upstream.config.url
        if url not in self._routes:
            props = await upstream.about("GET", url_of(upstream.config, "/props", root=True))
            models = None if props else await upstream.about("GET", url_of(upstream.config, "/models"))
            self._routes[url] = route_for(props, models)
            if self._routes[url] is None:
                _tell(upstream, "prompt by text: the upstream is neither llama.cpp, vLLM nor SGLang")
        return self._routes[url]

    async def _learn(
        self,
        upstream: Upstream,
        route: IdsRoute,
        key: tuple[object, ...],
        split: Split,
        body_with: BodyWith,
        snapshot: Snapshot,
    ) -> tuple[bytes, ...] | None:
        """The epoch's ids, encoded, checked against the whole prompt; None: they differ."""
        if key in self._kept:
            self._kept[key] = self._kept.pop(key)
            return self._kept[key]
        ids = await route.learn(upstream, split, body_with(snapshot.json_text), snapshot.json_text)
        self._metrics.prompt_checks.inc((("outcome", "mismatch" if ids is None else "match"),))
        commit = _named(snapshot)
        if ids is None:
            _tell(upstream, f"prompt by text for epoch {commit}: its token ids differ from the whole prompt's")
        else:
            log.info("prompt by token ids for epoch %s: %d tokens, checked", commit, len(ids))
        self._kept[key] = None if ids is None else await asyncio.to_thread(encoded_ids, ids)
        while len(self._kept) > KEPT:
            oldest = next(iter(self._kept))
            del self._kept[oldest]
            self._grows.pop(oldest, None)
        return self._kept[key]


def _named(snapshot: Snapshot) -> str:
    """An epoch as the log names it."""
    return (snapshot.commit or "none")[:12]


def _tell(upstream: Upstream, message: str) -> None:
    """A fallback to text: a warning when tokens were asked for, else (auto) a note."""
    log.log(logging.WARNING if upstream.config.prompt == "tokens" else logging.INFO, message)
