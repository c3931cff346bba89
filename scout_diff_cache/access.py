"""Who gets in: client keys, and a cap on chat requests handled at once.

Keys come from `[server] api_keys_file` (re-read on reload); when set, every route but `/health`
needs `Authorization: Bearer KEY`. A presented key is compared with every configured key in
constant time, so timing tells nothing about how much of a key was right.
"""

from __future__ import annotations

import hmac

import attrs
from aiohttp import web

from .app_keys import live_key
from .errors import TooManyRequests, Unauthorized

OPEN_PATHS = frozenset({"/health"})


@attrs.define
class Admission:
    """Chat requests being handled now."""

    active: int = 0


admission_key = web.AppKey("admission", Admission)


def presented_key_is_valid(request: web.Request, keys: tuple[str, ...]) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    presented = token.strip().encode()
    valid = False
    for key in keys:  # no early exit
        valid |= hmac.compare_digest(presented, key.encode())
    return valid


@web.middleware
async def require_key(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    keys = request.app[live_key].config.server.api_keys
    if keys and request.path not in OPEN_PATHS and not presented_key_is_valid(request, keys):
        raise Unauthorized("a valid API key is required: send it as 'Authorization: Bearer KEY'")
    return await handler(request)


@web.middleware
async def limit_concurrency(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    if request.path != "/v1/chat/completions":
        return await handler(request)
    admission = request.app[admission_key]
    limit = request.app[live_key].config.server.max_concurrent_requests
    if admission.active >= limit:
        raise TooManyRequests(f"the proxy is handling {limit} chat requests already (max_concurrent_requests); retry shortly")
    admission.active += 1
    try:
        return await handler(request)
    finally:
        admission.active -= 1
