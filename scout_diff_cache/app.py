"""The application: routes, middlewares, and the resources that live as long as it does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator

from aiohttp import web

from .accounting import Exchange
from .app_keys import config_key, context_key, exchange_key, session_key
from .config import Config
from .context import RepositoryContext
from .errors import BodyTooLarge, MethodNotAllowed, NotFound, ProxyError, error_body
from .routes import add_routes
from .upstream import open_session

log = logging.getLogger("scout_diff_cache")


@web.middleware
async def log_requests(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """One line per request; never bodies, message contents or keys."""
    exchange = request[exchange_key] = Exchange()
    started = time.monotonic()
    status: int | str = "-"
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status, exchange.outcome = "-", "client_closed"
        raise
    finally:
        log.info(
            "%s %s %s %.3fs %s",
            request.method, request.path, status, time.monotonic() - started, exchange.describe(),
        )


@web.middleware
async def errors_to_envelope(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """The one place an error becomes an OpenAI error envelope."""
    try:
        return await handler(request)
    except web.HTTPException as http_error:
        error = _from_http(http_error, request)
        if error is None:
            raise
    except ProxyError as proxy_error:
        error = proxy_error
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = ProxyError("internal error in the proxy; see its log")
    request[exchange_key].outcome = error.code
    return web.Response(status=error.status, body=error_body(error), content_type="application/json")


def _from_http(error: web.HTTPException, request: web.Request) -> ProxyError | None:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge(f"the request body is larger than max_body_bytes ({request.app[config_key].server.max_body_bytes} bytes)")
    if isinstance(error, web.HTTPNotFound):
        return NotFound(f"no route {request.method} {request.path}")
    if isinstance(error, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(error.allowed_methods))}")
    return None


def make_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[log_requests, errors_to_envelope])
    app[config_key] = config
    app[context_key] = RepositoryContext(config.repository)
    add_routes(app)
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_first_snapshot)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    async with open_session(app[config_key].upstream) as session:
        app[session_key] = session
        yield


async def _first_snapshot(app: web.Application) -> AsyncIterator[None]:
    """Build the snapshot at startup so the first request does not pay for it."""
    if not app[config_key].context.inject:
        yield
        return
    warm = asyncio.create_task(_build_current(app[context_key]))
    yield
    warm.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await warm


async def _build_current(context: RepositoryContext) -> None:
    with contextlib.suppress(ProxyError):  # logged where it failed; requests will retry
        await context.snapshot_for(await context.head())
