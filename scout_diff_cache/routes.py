"""The HTTP routes: short handlers that hand the real work to the modules named for it."""

from __future__ import annotations

from aiohttp import web

from .accounting import Exchange
from .app_keys import config_key, context_key, exchange_key, session_key
from .context import Context
from .errors import ProxyError
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
    config = request.app[config_key]
    raw = await request.read()
    chat = parse_chat_request(raw, config.upstream.model)
    exchange: Exchange = request[exchange_key]
    exchange.stream = chat.stream
    headers: dict[str, str] = {}
    body = Body((raw,))
    if config.context.inject:
        context = await request.app[context_key].current()
        body = assemble(chat, context.snapshot.message, context.diff.message)
        headers = context_headers(context)
        exchange.snapshot_commit = context.snapshot.commit
        exchange.injected_bytes = context.snapshot.text_bytes + context.diff.text_bytes
    session = request.app[session_key]
    if chat.stream:
        return await relay_stream(
            request, session, config.upstream, config.server.sse_keepalive_interval, body, headers, exchange
        )
    return await relay_json(session, config.upstream, body, headers, exchange)


async def models(request: web.Request) -> web.Response:
    config = request.app[config_key].upstream
    try:
        return web.Response(body=await fetch_models(request.app[session_key], config), content_type="application/json")
    except ProxyError:
        listed = {"id": config.model, "object": "model", "created": 0, "owned_by": "scout-diff-cache"}
        return web.json_response({"object": "list", "data": [listed]})


async def health(request: web.Request) -> web.Response:
    context = request.app[context_key]
    snapshot = context.snapshot
    return web.json_response(
        {
            "status": "ok",
            "inject": request.app[config_key].context.inject,
            "snapshot": {
                "state": context.state,
                "commit": snapshot.commit if snapshot else None,
                "bytes": snapshot.text_bytes if snapshot else 0,
                "files": snapshot.files if snapshot else 0,
                "builds": context.builds_started,
                "error": context.last_error,
            },
        }
    )


async def ready(request: web.Request) -> web.Response:
    """200 only when a request now would neither wait for a snapshot build nor fail upstream."""
    reasons = []
    if request.app[config_key].context.inject:
        context = request.app[context_key]
        try:
            head = await context.head()
        except ProxyError as error:
            reasons.append(error.message)
        else:
            if context.snapshot is None or context.snapshot.commit != head:
                context.build_in_background(head)
                reasons.append(f"the snapshot of {head or 'the empty repository'} is being built")
    try:
        await fetch_models(request.app[session_key], request.app[config_key].upstream)
    except ProxyError as error:
        reasons.append(error.message)
    body = {"ready": not reasons, "reasons": reasons}
    return web.json_response(body, status=503 if reasons else 200)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
