"""The HTTP routes: short handlers that hand the real work to the modules named for it, and the
route table that says, once per route, which concerns apply to it."""

from __future__ import annotations

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from .access import client_scope, limit_concurrency, require_key
from .accounting import Exchange
from .app_keys import exchange_key, live_key, metrics_key, session_key, totals_key
from .config import is_loopback
from .conversations import Prepared
from .errors import Forbidden, InvalidRequest, ProxyError
from .metrics import render as render_metrics
from .prompt import Body, assemble
from .relay import relay_json, relay_stream
from .upstream import fetch_models
from .validation import ChatRequest, parse_chat_request


def injection_headers(prepared: Prepared) -> dict[str, str]:
    """Tell the client what was injected, so it can check the cache-relevant part at a glance."""
    return {
        "X-Scout-Snapshot-Commit": prepared.snapshot.commit or "none",
        "X-Scout-Snapshot-Bytes": str(prepared.snapshot.text_bytes),
        "X-Scout-Diff-Bytes": str(len(prepared.start)),
        "X-Scout-Conversation": prepared.outcome,
    }


async def prepare(request: web.Request, chat: ChatRequest) -> Prepared:
    """The context and messages for a chat request: its conversation's, or the current ones."""
    live = request.app[live_key]
    if live.config.context.conversations:
        placement = live.config.context.change_placement
        return await live.conversations.prepare(live.epochs, chat, client_scope(request), placement)
    injection = await live.epochs.current()
    return Prepared(injection.snapshot, injection.diff.message, chat.messages, "off")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    live = request.app[live_key]
    config = live.config
    raw = await request.read()
    chat = parse_chat_request(raw, config.upstream.model, config.upstream.cache_salt)
    exchange: Exchange = request[exchange_key]
    exchange.to_upstream = True
    exchange.stream = chat.stream
    headers: dict[str, str] = {}
    # without injection the client's body goes as it came, unless a cache_salt must go in
    body = Body((raw,)) if config.upstream.cache_salt is None else assemble(chat.messages, chat.fields)
    if config.context.inject:
        prepared = await prepare(request, chat)
        body = assemble(prepared.messages, chat.fields, prepared.snapshot.message, prepared.start)
        headers = injection_headers(prepared)
        exchange.snapshot_commit = prepared.snapshot.commit
        exchange.snapshot_bytes = prepared.snapshot.text_bytes
        exchange.diff_bytes = len(prepared.start)
        exchange.client_bytes = len(prepared.messages)
        exchange.conversation = prepared.outcome
    session = request.app[session_key]
    if chat.stream:
        return await relay_stream(
            request,
            session,
            config.upstream,
            body,
            routing=live.routing,
            keepalive_interval=config.server.sse_keepalive_interval,
            strip_usage=not chat.wants_usage and body.chunks != (raw,),
            headers=headers,
            exchange=exchange,
        )
    return await relay_json(session, config.upstream, body, routing=live.routing, headers=headers, exchange=exchange)


async def models(request: web.Request) -> web.Response:
    config = request.app[live_key].config.upstream
    try:
        answer = await fetch_models(request.app[session_key], config, request.app[live_key].routing)
        return web.Response(body=answer, content_type="application/json")
    except ProxyError:
        listed = {"id": config.model, "object": "model", "created": 0, "owned_by": "scout-diff-cache"}
        return web.json_response({"object": "list", "data": [listed]})


async def health(request: web.Request) -> web.Response:
    epochs = request.app[live_key].epochs
    snapshot = epochs.snapshot
    rebase = epochs.last_rebase
    totals = request.app[totals_key]
    metrics = request.app[metrics_key]
    return web.json_response(
        {
            "status": "ok",
            "inject": request.app[live_key].config.context.inject,
            "snapshot": {
                "state": epochs.state,
                "commit": snapshot.commit if snapshot else None,
                "bytes": snapshot.text_bytes if snapshot else 0,
                "files": snapshot.files if snapshot else 0,
                "builds": metrics.snapshot_builds.total,
                "rebases": metrics.rebases.total,
                "folds": metrics.folds.total,
                "remembered": list(epochs.remembered.bases),
                "error": epochs.last_error,
            },
            "last_rebase": attrs.asdict(rebase) if rebase else None,
            "totals": attrs.asdict(totals),
        }
    )


async def ready(request: web.Request) -> web.Response:
    """200 only when a request now would neither wait for the snapshot nor fail upstream."""
    reasons = []
    epochs = request.app[live_key].epochs
    if request.app[live_key].config.context.inject and epochs.snapshot is None:
        reasons.append(f"the snapshot is {epochs.state}" + (f": {epochs.last_error}" if epochs.last_error else ""))
    try:
        await fetch_models(
            request.app[session_key], request.app[live_key].config.upstream, request.app[live_key].routing
        )
    except ProxyError as error:
        reasons.append(error.message)
    return web.json_response({"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200)


async def rebase(request: web.Request) -> web.Response:
    """Move the snapshot to HEAD now (warmed upstream first): loopback clients, or key holders."""
    if not is_loopback(request.remote) and not request.app[live_key].config.server.api_keys:
        raise Forbidden("admin routes accept only loopback clients, or clients with an API key (api_keys_file)")
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


ROUTES = (
    Route("POST", "/v1/chat/completions", chat_completions, limited=True),
    Route("GET", "/v1/models", models),
    Route("GET", "/health", health, open=True),
    Route("GET", "/ready", ready),
    Route("GET", "/metrics", metrics),
    Route("POST", "/admin/rebase", rebase),
)


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        handler = limit_concurrency(route.handler) if route.limited else route.handler
        app.router.add_route(route.method, route.path, handler if route.open else require_key(handler))
