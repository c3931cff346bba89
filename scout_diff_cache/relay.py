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

import aiohttp
from aiohttp import web

from .accounting import Exchange, SseUsageFilter, usage_of
from .app_keys import metrics_key
from .config import UpstreamConfig
from .errors import ProxyError, error_body
from .prompt import Body
from .routing import Routing
from .upstream import check_status, next_chunk, no_first_byte, read_json_answer, send_chat

KEEPALIVE = b": keep-alive\n\n"


async def relay_json(
    session: aiohttp.ClientSession,
    config: UpstreamConfig,
    body: Body,
    *,
    routing: Routing,
    headers: Mapping[str, str],
    exchange: Exchange,
) -> web.Response:
    started = time.monotonic()
    data, payload = await read_json_answer(session, config, body, routing)
    exchange.first_byte_seconds = time.monotonic() - started  # a JSON answer comes in one piece
    exchange.usage = usage_of(payload)
    return web.Response(body=data, content_type="application/json", headers=headers)


async def _open_stream(
    session: aiohttp.ClientSession, config: UpstreamConfig, body: Body, routing: Routing
) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await send_chat(session, config, body, routing)
    try:
        await check_status(response, config.idle_timeout)
        return response, await next_chunk(response, config.idle_timeout)
    except BaseException:
        response.close()
        raise


async def relay_stream(
    request: web.Request,
    session: aiohttp.ClientSession,
    config: UpstreamConfig,
    body: Body,
    *,
    routing: Routing,
    keepalive_interval: float,
    strip_usage: bool,
    headers: Mapping[str, str],
    exchange: Exchange,
) -> web.StreamResponse:
    """Relay the upstream's SSE answer as it comes; `strip_usage` drops the usage-only event the
    proxy asked for on the client's behalf."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.first_byte_timeout
    opening = asyncio.ensure_future(_open_stream(session, config, body, routing))
    client: web.StreamResponse | None = None
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
        upstream, chunk = opening.result()
        exchange.first_byte_seconds = loop.time() - started
        client = client or await _start_sse(request, headers)
        usage = SseUsageFilter(strip=strip_usage)
        while chunk:
            if relayed := usage.feed(chunk):
                await client.write(relayed)
            chunk = await next_chunk(upstream, config.idle_timeout)
        if rest := usage.flush():
            await client.write(rest)
        exchange.usage = usage.usage
        await client.write_eof()
        return client
    except ProxyError as error:
        if client is None:
            raise
        exchange.outcome = error.code
        await client.write(b"data: " + error_body(error) + b"\n\n")
        await client.write_eof()
        return client
    except ConnectionResetError:
        exchange.outcome = "client_closed"
        return client or web.StreamResponse()
    finally:  # whatever happened, the upstream request ends here (vLLM and llama.cpp then stop)
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
