"""Who gets in: client keys, and a cap on requests to the upstream handled at once.

Keys come from `[server] api_keys_file` (re-read on reload); when set, every route the route table
does not mark open (`/health`, `HEAD /`) needs a key, sent as `Authorization: Bearer KEY` or as
`x-api-key: KEY` (how Anthropic clients send it). A presented key is compared with every configured
key in constant time, so timing tells nothing about how much of a key was right.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from .config import is_loopback
from .errors import Forbidden, TooManyRequests, Unauthorized
from .state import live_key


@attrs.define
class Admission:
    """Requests to the upstream being handled now."""

    active: int = 0


admission_key = web.AppKey("admission", Admission)


def presented_key(request: web.Request) -> str:
    """The client's key: a bearer token, else an `x-api-key` header; empty when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


def presented_key_is_valid(request: web.Request, keys: tuple[str, ...]) -> bool:
    presented = presented_key(request).encode()
    if not presented:
        return False
    valid = False
    for key in keys:  # no early exit
        valid |= hmac.compare_digest(presented, key.encode())
    return valid


def client_scope(request: web.Request) -> str:
    """Whose conversations a request may continue: a hash of its key, when keys are configured."""
    if not request.app[live_key].config.server.api_keys:
        return ""
    return hashlib.sha256(presented_key(request).encode()).hexdigest()


def key_name(request: web.Request) -> str:
    """Whose request this is, for the status page and its log: "key N", the presented key's line
    among the configured keys (never the key), or "anyone" when no keys are configured."""
    keys = request.app[live_key].config.server.api_keys
    presented = presented_key(request).encode()
    found = [hmac.compare_digest(presented, key.encode()) for key in keys]  # no early exit
    return f"key {found.index(True) + 1}" if True in found else "anyone"


def require_key(handler: Handler) -> Handler:
    """The route answers only clients that present a configured key (when keys are configured)."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        keys = request.app[live_key].config.server.api_keys
        if keys and not presented_key_is_valid(request, keys):
            raise Unauthorized(
                "a valid API key is required: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
            )
        return await handler(request)

    return checked


def admin_only(handler: Handler) -> Handler:
    """The route answers loopback clients only, unless client keys are configured (then a key
    holder anywhere: `require_key` checks the key)."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        if not is_loopback(request.remote) and not request.app[live_key].config.server.api_keys:
            raise Forbidden("admin routes accept only loopback clients, or clients with an API key (api_keys_file)")
        return await handler(request)

    return checked


def limit_concurrency(handler: Handler) -> Handler:
    """The route takes one of `max_concurrent_requests` places while it runs; none free: 429."""

    @functools.wraps(handler)
    async def admitted(request: web.Request) -> web.StreamResponse:
        admission = request.app[admission_key]
        limit = request.app[live_key].config.server.max_concurrent_requests
        if admission.active >= limit:
            raise TooManyRequests(
                f"the proxy is handling {limit} requests already (max_concurrent_requests); retry shortly"
            )
        admission.active += 1
        try:
            return await handler(request)
        finally:
            admission.active -= 1

    return admitted
