"""The HTTP routes: short handlers that hand the real work to the modules named for it, and the
route table that says, once per route, which concerns apply to it."""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from .access import admin_only, client_scope, key_name, limit_concurrency, require_key
from .accounting import Exchange
from .apis.dialects import CHAT, MESSAGES, RESPONSES, Dialect
from .apis.validation import ClientRequest, RequestRules
from .config import Config
from .context.conversations import Prepared
from .context.split import too_long
from .encoding import Body, Chunk, encode_json
from .errors import ContextTooLong, InvalidRequest, MethodNotAllowed, ProxyError
from .metrics import render as render_metrics
from .passthrough import forwarded
from .relay import Outbound, as_the_client_counts, relay_any, relay_json, relay_stream
from .sent import sent_prompt
from .state import (
    Live,
    dialect_key,
    exchange_key,
    live_key,
    metrics_key,
    prompt_ids_key,
    recent_key,
    tokens_key,
    totals_key,
    upstream_key,
)
from .status import prefix_health, status_json, status_page
from .upstream.layout import Layout
from .upstream.prompt_ids import BodyWith
from .upstream.truncation import truncated

log = logging.getLogger(__name__)


#: Said on an answer the upstream gave to a cut prompt (on a stream: while the upstream cuts them).
TRUNCATED = "X-Scout-Context-Truncated"
TRUNCATED_TEXT = "the upstream cut the prompt and did not read the whole repository; see /health"


def injection_headers(prepared: Prepared) -> dict[str, str]:
    """Tell the client what was injected, so it can check the cache-relevant part at a glance."""
    return {
        "X-Scout-Snapshot-Commit": prepared.snapshot.commit or "none",
        "X-Scout-Snapshot-Bytes": str(prepared.snapshot.text_bytes),
        "X-Scout-Diff-Bytes": str(prepared.start_bytes),
        "X-Scout-Conversation": prepared.outcome,
    }


async def prepare(request: web.Request, client: ClientRequest, api: Dialect, layout: Layout) -> Prepared:
    """The context and messages for a request: its conversation's, or the current ones.

    A Responses request that names `previous_response_id` continues a conversation the upstream
    holds, which the proxy does not see: it gets the snapshot (instructions are not carried over
    from the earlier response) and the current working diff before its new input, so the model
    reads the work tree's state after everything it saw before.
    """
    live = request.app[live_key]
    context = live.config.context
    if context.conversations and not client.continues_response:
        # the strict layout takes no system message among the turns: a change opens a user message
        placement = "user" if layout.strict else context.change_placement
        scope = f"{layout.name}:{client_scope(request)}"
        return await live.conversations.prepare(client, api, scope, placement)
    injection = await live.epochs.inject()
    injected = injection.snapshot.text_bytes + injection.diff.text_bytes
    diff = injection.diff
    return Prepared(injection.snapshot, diff.json_text, diff.text_bytes, client.parts, "off", injected)


async def injected_tokens(request: web.Request, prepared: Prepared) -> int | None:
    """The injected tokens to take out of the usage the client sees (None: leave it as counted).

    The first request on an epoch no warm-up has measured yet waits for one: it caches the same
    prefix the request itself needs, so the upstream does that work once either way.
    """
    live = request.app[live_key]
    if live.config.context.usage != "client":
        return None
    tokens = request.app[tokens_key].of(live.config.upstream.url, live.config.upstream.model)
    if not tokens.known(prepared.snapshot.commit) and live.epochs.snapshot is prepared.snapshot:
        try:
            await live.epochs.warm_shared()
        except ProxyError as error:
            log.warning("could not measure the injected context's tokens: %s", error.message)
    return tokens.count(prepared.snapshot.commit, prepared.injected_bytes)


async def as_ids(
    request: web.Request, client: ClientRequest, body_with: BodyWith, prepared: Prepared, injected: int | None
) -> Outbound | None:
    """The request with the snapshot as token ids, where `[upstream] prompt` asks for them and the
    API, the request and the upstream allow (None: it goes by text, counted with why)."""
    if request.app[live_key].config.upstream.prompt == "text":
        return None
    ids = request.app[prompt_ids_key]
    if request[dialect_key] is not CHAT:
        ids.count("text", "api")  # Responses and Messages clients send tools: the chat parser is needed
        return None
    found = await ids.prompt(request.app[upstream_key], client, body_with, prepared.snapshot)
    if found is None:
        return None
    return Outbound(CHAT, found.path, found.body, not client.wants_usage, injected, found.root, found.answers)


def refused(live: Live, prepared: Prepared, client_bytes: int) -> ContextTooLong | None:
    """The error for a prompt the proxy can tell is longer than the window (see `split.too_long`):
    only with a snapshot the upstream counted, and a window known."""
    window, snapshot = live.windows.known.tokens, prepared.snapshot
    if window is None or snapshot.tokens is None:
        return None
    rest = prepared.injected_bytes - snapshot.text_bytes + client_bytes
    estimate = too_long(window, snapshot.tokens, snapshot.text_bytes, rest)
    if estimate is None:
        return None
    return ContextTooLong(
        f"the prompt would be about {estimate:,} tokens, more than the upstream's window of {window:,} tokens "
        "(not sent); shorten the conversation",
        estimate,
        window,
    )


def request_rules(config: Config) -> RequestRules:
    upstream = config.upstream
    drop = config.context.billing_header == "drop"
    return RequestRules(upstream.model, upstream.cache_salt, drop, upstream.chat_template_kwargs)


def salted(raw: bytes, salt: str | None) -> Body:
    """The client's body as it came, with the configured cache_salt in it, if any."""
    if salt is None:
        return Body((raw,))
    return Body((encode_json({**json.loads(raw), "cache_salt": salt}),))


async def forward(request: web.Request) -> web.StreamResponse:
    """A request on a client API (its route's dialect): the repository context put in, the answer
    relayed."""
    api = request[dialect_key]
    live = request.app[live_key]
    config = live.config
    raw = await request.read()
    client = api.parse(raw, request_rules(config))
    exchange: Exchange = request[exchange_key]
    exchange.api, exchange.to_upstream, exchange.stream = api.name, True, client.stream
    exchange.client = key_name(request)
    headers: dict[str, str] = {}
    if config.context.inject:
        layout = await live.layouts.current()
        prepared = await prepare(request, client, api, layout)
        window = live.windows.known.tokens
        live.epochs.fit_to(live.split(window).snapshot if window else None)

        def body_with(snapshot: tuple[Chunk, ...]) -> Body:
            return api.body(client, prepared.parts, snapshot, prepared.start, layout.strict)

        headers = injection_headers(prepared)
        if request.app[metrics_key].truncation:
            headers[TRUNCATED] = TRUNCATED_TEXT
        exchange.snapshot_commit = prepared.snapshot.commit
        exchange.snapshot_bytes = prepared.snapshot.text_bytes
        exchange.snapshot_tokens = prepared.snapshot.tokens
        exchange.diff_bytes = prepared.start_bytes
        exchange.client_bytes = client.encoded_bytes
        exchange.injected_bytes = prepared.injected_bytes
        exchange.conversation = prepared.outcome
        exchange.sent = sent_prompt(client, prepared)
        # chat streams ask upstream for usage on the client's behalf; the other APIs always carry it
        injected = await injected_tokens(request, prepared)
        text = Outbound(api, api.path, body_with(prepared.snapshot.json_text), not client.wants_usage, injected)
        refusal = refused(live, prepared, client.encoded_bytes)
        if refusal is not None:  # the upstream would refuse it: say so without sending it
            raise as_the_client_counts(refusal, text)
        by_ids = await as_ids(request, client, body_with, prepared, injected)
        outbound = by_ids or text
        headers["X-Scout-Prompt"] = "text" if by_ids is None else "tokens"
    else:  # the client's body as it came
        exchange.sent = sent_prompt(client, None)
        outbound = Outbound(api, api.path, salted(raw, config.upstream.cache_salt))
    upstream = request.app[upstream_key]
    if client.stream:
        interval = config.server.sse_keepalive_interval
        return await relay_stream(
            request, upstream, outbound, keepalive_interval=interval, headers=headers, exchange=exchange
        )
    answer = await relay_json(upstream, outbound, headers=headers, exchange=exchange)
    if exchange.usage is not None and exchange.injected_bytes:  # this answer's own usage tells
        cut = truncated(exchange.sent_bytes, exchange.usage.prompt_tokens, exchange.snapshot_tokens)
        answer.headers.popall(TRUNCATED, None)
        answer.headers.update({TRUNCATED: TRUNCATED_TEXT} if cut else {})
    return answer


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Anthropic's token count. With `usage = client` the client's own request is counted, as it
    came (exact, and the upstream has no snapshot to tokenise); with `upstream`, the request as
    the proxy would send it."""
    live = request.app[live_key]
    config = live.config
    raw = await request.read()
    client = MESSAGES.parse(raw, request_rules(config))
    exchange: Exchange = request[exchange_key]
    exchange.api, exchange.to_upstream = MESSAGES.name, True
    body = salted(raw, config.upstream.cache_salt)
    if config.context.inject and config.context.usage == "upstream":
        injection = await live.epochs.inject()
        body = MESSAGES.body(client, client.parts, injection.snapshot.json_text, injection.diff.json_text)
    outbound = Outbound(MESSAGES, "/messages/count_tokens", body)
    return await relay_json(request.app[upstream_key], outbound, headers={}, exchange=exchange)


async def passthrough(request: web.Request) -> web.StreamResponse:
    """An inference route the proxy does not serve itself (embeddings, completions, tokenize,
    audio...): to the upstream as it came, its answer streamed back as it comes. Only the client's
    key stays behind; any other route, or a path that could mean another one, goes nowhere, and a
    route of the proxy's own asked with another method is told which it takes."""
    if allowed := sorted(route.method for route in ROUTES if route.path == request.path):
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}")
    live = request.app[live_key]
    upstream = live.config.upstream
    segments = forwarded(request.rel_url.raw_path, upstream.passthrough_routes)
    exchange: Exchange = request[exchange_key]
    exchange.to_upstream = True
    body = await request.read()
    return await relay_any(request, request.app[upstream_key], segments, body, exchange)


async def root(request: web.Request) -> web.Response:
    """A client's probe of the base URL (Claude Code sends `HEAD /` first): quick, and open."""
    return web.Response(text="scout-diff-cache\n")


async def models(request: web.Request) -> web.Response:
    """The upstream's models, each with the window left to the client (see `Live.client_window`) in the
    fields clients read, in place of the upstream's whole window."""
    live = request.app[live_key]
    config = live.config.upstream
    room = live.client_window()
    try:
        answer = await request.app[upstream_key].fetch_models()
    except ProxyError:
        listed = {"id": config.model, "object": "model", "created": 0, "owned_by": "scout-diff-cache"}
        return web.json_response({"object": "list", "data": [{**listed, **_window_fields(room)}]})
    parsed = _json_object(answer)
    if room is None or not isinstance(parsed.get("data"), list):
        return web.Response(body=answer, content_type="application/json")
    parsed["data"] = [
        {**entry, **_window_fields(room)} if isinstance(entry, dict) else entry for entry in parsed["data"]
    ]
    return web.json_response(parsed)


def _window_fields(room: int | None) -> dict[str, int]:
    """vLLM's and SGLang's field, and the one OpenRouter-style clients (OpenCode, Continue) read."""
    return {} if room is None else {"max_model_len": room, "context_length": room}


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def health(request: web.Request) -> web.Response:
    live = request.app[live_key]
    epochs = live.epochs.status()
    layout = live.layouts.known
    window = live.windows.known
    snapshot = epochs.snapshot
    rebase = epochs.last_rebase
    totals = request.app[totals_key]
    metrics = request.app[metrics_key]
    return web.json_response(
        {
            "status": "ok",
            "inject": request.app[live_key].config.context.inject,
            "layout": {"name": layout.name, "reason": layout.reason},
            "window": {
                "tokens": window.tokens,
                "source": window.source,
                "split": attrs.asdict(live.split(window.tokens)) if window.tokens else None,
                "client": live.client_window(),
            },
            "snapshot": {
                "state": epochs.state,
                "commit": snapshot.commit if snapshot else None,
                "bytes": snapshot.text_bytes if snapshot else 0,
                "files": snapshot.files if snapshot else 0,
                "tokens": snapshot.tokens if snapshot else None,
                "budget": snapshot.budget if snapshot else None,
                "over_window": len(snapshot.over_window) if snapshot else 0,
                "builds": metrics.snapshot_builds.total,
                "rebases": metrics.rebases.total,
                "folds": metrics.folds.total,
                "remembered": list(epochs.remembered),
                "error": epochs.last_error,
            },
            "last_rebase": attrs.asdict(rebase) if rebase else None,
            "truncation": metrics.truncation,
            "totals": attrs.asdict(totals),
            "prefix": prefix_health(request.app[recent_key], metrics),
        }
    )


async def ready(request: web.Request) -> web.Response:
    """200 only when a request now would neither wait for the snapshot nor fail upstream."""
    reasons = []
    epochs = request.app[live_key].epochs.status()
    if request.app[live_key].config.context.inject and epochs.snapshot is None:
        reasons.append(f"the snapshot is {epochs.state}" + (f": {epochs.last_error}" if epochs.last_error else ""))
    try:
        await request.app[upstream_key].fetch_models()
    except ProxyError as error:
        reasons.append(error.message)
    return web.json_response({"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200)


async def rebase(request: web.Request) -> web.Response:
    """Move the snapshot to HEAD now (warmed upstream first): loopback clients, or key holders."""
    if not request.app[live_key].config.context.inject:
        raise InvalidRequest("context injection is off ([context] inject = false): there is no snapshot to rebase")
    done = await request.app[live_key].epochs.rebase()
    return web.json_response(attrs.asdict(done))


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    text = render_metrics(app[metrics_key], app[totals_key])
    return web.Response(text=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@attrs.frozen
class Route:
    method: str
    path: str
    handler: Handler
    #: Answered without a client key (a liveness probe must not need one).
    open: bool = False
    #: Counted against `max_concurrent_requests` (work that holds the upstream).
    limited: bool = False
    #: The client API it speaks, errors included (None: OpenAI's envelope, as chat's); its
    #: handler finds it under `dialect_key`.
    dialect: Dialect | None = None
    #: Only for loopback clients, unless client keys are configured (see `access.admin_only`).
    admin: bool = False


#: In the order they are matched: the catch-all /v1 route last.
ROUTES = (
    Route("POST", "/v1/chat/completions", forward, limited=True, dialect=CHAT),
    Route("POST", "/v1/responses", forward, limited=True, dialect=RESPONSES),
    Route("POST", "/v1/messages", forward, limited=True, dialect=MESSAGES),
    Route("POST", "/v1/messages/count_tokens", count_tokens, limited=True, dialect=MESSAGES),
    Route("GET", "/v1/models", models, limited=True),
    Route("*", "/v1/{tail:.+}", passthrough, limited=True),
    Route("HEAD", "/", root, open=True),
    Route("GET", "/health", health, open=True),
    Route("GET", "/ready", ready),
    Route("GET", "/metrics", metrics),
    Route("POST", "/admin/rebase", rebase, admin=True),
    Route("GET", "/status", status_page, admin=True),
    Route("GET", "/status.json", status_json, admin=True),
)


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        handler = limit_concurrency(route.handler) if route.limited else route.handler
        handler = admin_only(handler) if route.admin else handler
        handler = handler if route.open else require_key(handler)
        app.router.add_route(route.method, route.path, _speaking(route.dialect, handler) if route.dialect else handler)


def _speaking(dialect: Dialect, handler: Handler) -> Handler:
    """The handler, with the request marked as the dialect's (its errors get that envelope)."""

    async def marked(request: web.Request) -> web.StreamResponse:
        request[dialect_key] = dialect
        return await handler(request)

    return marked
