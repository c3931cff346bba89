"""The HTTP routes: short handlers that hand the real work to the modules named for it."""

from __future__ import annotations

import attrs

from aiohttp import web

from .accounting import Exchange
from .app_keys import exchange_key, live_key, metrics_key, session_key, totals_key
from .config import is_loopback
from .context import Context
from .errors import Forbidden, InvalidRequest, ProxyError
from .metrics import render as render_metrics
from .prompt import Body, assemble
from .relay import relay_json, relay_stream
from .upstream import fetch_models
from .validation import parse_chat_request


def context_headers(context: Context) -> dict[str, str]:
    """Tell the client what was injected, so it can check the cache-relevant part at a glance."""
    return {
        "X-Scout-Snapshot-Commit": context.snapshot.commit or "none",
        "X-Scout-Snapshot-Bytes": str(context.snapshot.text_bytes),
        "X-Scout-Diff-Bytes": str(context.diff.text_bytes),
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    config = request.app[live_key].config
    raw = await request.read()
    chat = parse_chat_request(raw, config.upstream.model)
    exchange: Exchange = request[exchange_key]
    exchange.stream = chat.stream
    headers: dict[str, str] = {}
    body = Body((raw,))
    if config.context.inject:
        context = await request.app[live_key].context.current()
        body = assemble(chat, context.snapshot.message, context.diff.message)
        headers = context_headers(context)
        exchange.snapshot_commit = context.snapshot.commit
        exchange.snapshot_bytes = context.snapshot.text_bytes
        exchange.diff_bytes = context.diff.text_bytes
        exchange.client_bytes = len(chat.messages)
    session = request.app[session_key]
    if chat.stream:
        strip = not chat.wants_usage and config.context.inject
        return await relay_stream(
            request, session, config.upstream, config.server.sse_keepalive_interval, body, strip, headers, exchange
        )
    return await relay_json(session, config.upstream, body, headers, exchange)


async def models(request: web.Request) -> web.Response:
    config = request.app[live_key].config.upstream
    try:
        return web.Response(body=await fetch_models(request.app[session_key], config), content_type="application/json")
    except ProxyError:
        listed = {"id": config.model, "object": "model", "created": 0, "owned_by": "scout-diff-cache"}
        return web.json_response({"object": "list", "data": [listed]})


async def health(request: web.Request) -> web.Response:
    context = request.app[live_key].context
    snapshot = context.snapshot
    rebase = context.last_rebase
    totals = request.app[totals_key]
    return web.json_response(
        {
            "status": "ok",
            "inject": request.app[live_key].config.context.inject,
            "snapshot": {
                "state": context.state,
                "commit": snapshot.commit if snapshot else None,
                "bytes": snapshot.text_bytes if snapshot else 0,
                "files": snapshot.files if snapshot else 0,
                "builds": context.builds_started,
                "rebases": context.rebases,
                "folds": context.folds,
                "error": context.last_error,
            },
            "last_rebase": attrs.asdict(rebase) if rebase else None,
            "totals": attrs.asdict(totals),
        }
    )


async def ready(request: web.Request) -> web.Response:
    """200 only when a request now would neither wait for the snapshot nor fail upstream."""
    reasons = []
    context = request.app[live_key].context
    if request.app[live_key].config.context.inject and context.snapshot is None:
        reasons.append(f"the snapshot is {context.state}" + (f": {context.last_error}" if context.last_error else ""))
    try:
        await fetch_models(request.app[session_key], request.app[live_key].config.upstream)
    except ProxyError as error:
        reasons.append(error.message)
    return web.json_response({"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200)


async def rebase(request: web.Request) -> web.Response:
    """Move the snapshot to HEAD now (warmed upstream first): loopback clients, or key holders."""
    if not is_loopback(request.remote) and not request.app[live_key].config.server.api_keys:
        raise Forbidden("admin routes accept only loopback clients, or clients with an API key (api_keys_file)")
    if not request.app[live_key].config.context.inject:
        raise InvalidRequest("context injection is off ([context] inject = false): there is no snapshot to rebase")
    done = await request.app[live_key].context.rebase()
    return web.json_response(attrs.asdict(done))


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    text = render_metrics(app[metrics_key], app[live_key].context, app[totals_key])
    return web.Response(text=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/rebase", rebase)
