"""Carrying the upstream's answer back to the client: JSON whole, SSE chunk by chunk.

A streaming client gets its response headers only once the upstream has answered, or once the
first keep-alive interval has passed with no answer: quick upstream errors thus keep their real
HTTP status, and a long prefill still gets `: keep-alive` comments so nobody times out. After the
headers are out, an error can only be told as an SSE error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import attrs
from aiohttp import web

from .accounting import Exchange
from .apis.dialects import Dialect
from .encoding import Body, encode_json
from .errors import ContextTooLong, ProxyError
from .state import metrics_key
from .upstream.client import Upstream, check_status, next_chunk, no_first_byte, url_under
from .usage import SseUsage, usage_fields

KEEPALIVE = b": keep-alive\n\n"


@attrs.frozen
class Outbound:
    """One request for the upstream, and what to do to the usage in its answer."""

    #: The client's API: how the answer's usage reads, and its errors' envelope.
    api: Dialect
    #: Under the upstream's base URL.
    path: str
    body: Body
    #: Drop chat's usage-only event (asked for on the client's behalf).
    strip_usage: bool = False
    #: Injected tokens to take out of the usage the client sees (None: report the upstream's).
    injected: int | None = None
    #: `path` is under the server's root, not its base URL (llama.cpp's own routes).
    root: bool = False
    #: Turns an answer in another format (llama.cpp's `/completion`) into the client API's.
    answers: Answers | None = None


class Answers(Protocol):
    """The translation of one answer: whole, or its stream chunk by chunk."""

    def answer(self, payload: Any) -> Any: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


def as_the_client_counts(error: ProxyError, outbound: Outbound) -> ProxyError:
    """An over-long prompt's figures without the injected tokens when the client's usage leaves
    them out, so the message and the client's own meter agree (the overshoot is the same)."""
    if isinstance(error, ContextTooLong) and outbound.injected:
        return error.less(outbound.injected)
    return error


async def relay_json(
    upstream: Upstream, outbound: Outbound, *, headers: Mapping[str, str], exchange: Exchange
) -> web.Response:
    started = time.monotonic()
    try:
        data, payload = await upstream.read_json_answer(outbound.body, outbound.path, outbound.root)
    except ContextTooLong as error:
        raise as_the_client_counts(error, outbound) from None
    if outbound.answers is not None:
        payload = outbound.answers.answer(payload)
        data = encode_json(payload)
    exchange.first_byte_seconds = time.monotonic() - started  # a JSON answer comes in one piece
    exchange.usage = outbound.api.read_usage(payload)
    usage = usage_fields(payload)
    if outbound.injected and usage is not None:
        outbound.api.take_out(usage, outbound.injected)
        data = encode_json(payload)
    return web.Response(body=data, content_type="application/json", headers=headers)


async def _open_stream(upstream: Upstream, outbound: Outbound) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await upstream.send(outbound.path, outbound.body, outbound.root)
    idle_timeout = upstream.config.idle_timeout
    try:
        await check_status(response, idle_timeout)
        return response, await next_chunk(response, idle_timeout)
    except BaseException:
        response.close()
        raise


async def relay_stream(
    request: web.Request,
    upstream: Upstream,
    outbound: Outbound,
    *,
    keepalive_interval: float,
    headers: Mapping[str, str],
    exchange: Exchange,
) -> web.StreamResponse:
    """Relay the upstream's SSE answer as it comes, its usage read (and rewritten, if asked)."""
    config = upstream.config
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.first_byte_timeout
    opening = asyncio.ensure_future(_open_stream(upstream, outbound))
    client: web.StreamResponse | None = None
    usage = SseUsage(outbound.api, outbound.strip_usage, outbound.injected)
    metrics = request.app[metrics_key]
    metrics.streams_in_flight += 1
    try:
        while not opening.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise no_first_byte(config)
            await asyncio.wait([opening], timeout=min(remaining, keepalive_interval))
            if not opening.done() and loop.time() < deadline:
                client = client or await _start_sse(request, headers)
                await client.write(KEEPALIVE)
        answer, chunk = opening.result()
        exchange.first_byte_seconds = loop.time() - started
        client = client or await _start_sse(request, headers)
        answers = outbound.answers
        while chunk:
            if relayed := usage.feed(answers.feed(chunk) if answers else chunk):
                await client.write(relayed)
            chunk = await next_chunk(answer, config.idle_timeout)
        rest = usage.feed(answers.flush()) if answers else b""
        if rest := rest + usage.flush():
            await client.write(rest)
        await client.write_eof()
        return client
    except ProxyError as raised:
        error = as_the_client_counts(raised, outbound)
        if client is None:
            raise error from None
        exchange.outcome = error.code
        await client.write(outbound.api.error_event(error))
        await client.write_eof()
        return client
    except ConnectionResetError:
        exchange.outcome = "client_closed"
        return client or web.StreamResponse()
    finally:  # whatever happened, the upstream request ends here (vLLM and llama.cpp then stop)
        exchange.usage = usage.usage  # counted even when the client left after the usage event
        metrics.streams_in_flight -= 1
        if not opening.done():
            opening.cancel()
        elif not opening.cancelled() and opening.exception() is None:
            opening.result()[0].close()


async def _start_sse(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **headers,
        }
    )
    await response.prepare(request)
    return response


#: Headers that stay behind: per hop, the client's keys, and what the session sets itself.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "cookie",
    }
)


async def relay_any(
    request: web.Request, upstream: Upstream, segments: tuple[str, ...], body: bytes, exchange: Exchange
) -> web.StreamResponse:
    """Pass a request through to the same path upstream (its checked `segments` under /v1), and its
    answer back as it comes, status and headers included. Errors before the answer's headers get
    the proxy's envelope."""
    config = upstream.config
    url = url_under(config, segments, request.rel_url.raw_query_string)
    headers = {name: value for name, value in request.headers.items() if name.lower() not in NOT_FORWARDED}
    started = time.monotonic()
    opening = upstream.request_any(request.method, url, body, headers)
    try:
        answer = await asyncio.wait_for(opening, config.first_byte_timeout)
    except asyncio.TimeoutError:
        raise no_first_byte(config) from None
    try:
        exchange.first_byte_seconds = time.monotonic() - started
        kept = {name: value for name, value in answer.headers.items() if name.lower() not in NOT_FORWARDED}
        client = web.StreamResponse(status=answer.status, headers=kept)
        await client.prepare(request)
        try:
            while chunk := await next_chunk(answer, config.idle_timeout):
                await client.write(chunk)
        except ProxyError as error:
            exchange.outcome = error.code  # the status is out: the answer just ends short
            return client
        await client.write_eof()
        return client
    except ConnectionResetError:
        exchange.outcome = "client_closed"
        return web.StreamResponse()
    finally:
        answer.close()
