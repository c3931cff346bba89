"""Talking to the model server: one `Upstream` owning the session, sending a spliced body, reading
with limits.

There is no total timeout (a cold prefill of a 10M-token snapshot takes many minutes); instead
connect, first byte and the gap between chunks each have their own limit from the config. The
config and the routing are read live, per request, so a reload applies to the next request; for
that reason URLs are joined here rather than given to the session as a `base_url` (fixed when the
session is made; aiohttp accepts one with a path such as `/v1/` only with a trailing slash, and
then resolves a path that starts with `/` from the host's root).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import ClientHandlerType
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from yarl import URL  # aiohttp's own URL type, installed with it

from ..apis.assembly import assemble, system_message
from ..apis.chat import CHAT
from ..config import UpstreamConfig
from ..encoding import Body, Encoded, encode_json
from ..errors import ProxyError, UpstreamBadResponse, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from ..usage import Usage
from .overflow import context_too_long
from .progress import PROGRESS_FIELDS, ProgressReader, Report
from .routing import Routing
from .window import root_of

log = logging.getLogger(__name__)

#: Seconds an idle connection is kept for reuse: less than the 5 s llama.cpp's and uvicorn's (vLLM,
#: SGLang) servers keep theirs, so a request never goes out on one the server is closing (it
#: would fail with "Server disconnected").
KEEPALIVE = 4.0
#: The content type of a body encoded here.
JSON = {"Content-Type": "application/json"}
#: An error body longer than this is cut before it is read whole.
MAX_ERROR_BODY = 64 * 1024
#: An answer about the server (its /props, /info) longer than this is not read.
MAX_ABOUT = 4 * 1024 * 1024
#: A non-streaming answer is held whole to check it; larger than this, it is refused, not buffered.
MAX_ANSWER = 32 * 1024 * 1024


def url_under(config: UpstreamConfig, segments: tuple[str, ...], query: str) -> URL:
    """The upstream's URL for checked path segments and a raw query, put under its base URL as they
    are: never decoded and joined again, so nothing in them can turn into another path."""
    base = URL(config.url)
    path = "/".join((base.raw_path.rstrip("/"), *segments))
    return URL.build(scheme=base.scheme, authority=base.raw_authority, path=path, query_string=query, encoded=True)


async def next_chunk(response: aiohttp.ClientResponse, idle_timeout: float) -> bytes:
    """The next bytes of the answer (b"" at its end), or an error if the upstream stalls or breaks."""
    try:
        return await asyncio.wait_for(response.content.readany(), idle_timeout)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"the upstream sent nothing for {idle_timeout:g}s in the middle of its answer") from None
    except aiohttp.ClientError as error:
        raise UpstreamBadResponse(f"the upstream connection broke in the middle of its answer: {error}") from None


async def read_all(response: aiohttp.ClientResponse, idle_timeout: float, limit: int | None = None) -> bytes:
    parts = []
    size = 0
    while chunk := await next_chunk(response, idle_timeout):
        parts.append(chunk)
        size += len(chunk)
        if limit is not None and size >= limit:
            break
    return b"".join(parts)


async def check_status(response: aiohttp.ClientResponse, idle_timeout: float) -> None:
    """Turn a non-2xx answer into the error the client should see."""
    if response.status < 400:
        return
    data = await read_all(response, idle_timeout, MAX_ERROR_BODY)
    raise error_from_answer(response.status, data)


def error_from_answer(status: int, data: bytes) -> ProxyError:
    """The error a non-2xx answer means, with the upstream's own message where it gave one."""
    error: object = None
    message = data[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        found = error.get("message") if isinstance(error, dict) else payload.get("message") or payload.get("detail")
        if isinstance(found, str) and found:
            message = found
        elif isinstance(error, str) and error:
            message = error
    if status >= 500:
        return UpstreamBadResponse(f"the upstream answered HTTP {status}: {message}")
    if overflow := context_too_long(status, payload):
        return overflow
    type_ = error.get("type") if isinstance(error, dict) else None
    return UpstreamRejected(status, message, type_ if isinstance(type_, str) else None)


def url_of(config: UpstreamConfig, path: str, root: bool = False) -> str:
    """`path` under the base URL, or under the server's root (llama.cpp's own routes)."""
    return f"{root_of(config.url) if root else config.url}{path}"


def no_first_byte(config: UpstreamConfig) -> UpstreamTimeout:
    return UpstreamTimeout(f"the upstream sent no answer within first_byte_timeout ({config.first_byte_timeout:g}s)")


def json_of(data: bytes) -> Any:
    """An answer's JSON, or the error that it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        raise UpstreamBadResponse("the upstream answered with a body that is not JSON") from None


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _sent(body: dict[str, Any] | bytes | None) -> dict[str, Any]:
    """How a body goes: encoded already, or to be encoded by the session."""
    return {"data": body, "headers": JSON} if isinstance(body, bytes) else {"json": body}


class BodyPayload(Payload):
    """A spliced body as the session sends it: chunk by chunk, with its length, and as often as
    asked (its chunks never change), so a request can go again on another connection."""

    _autoclose = True  # bytes in memory: nothing to close

    def __init__(self, body: Body) -> None:
        super().__init__(body, content_type="application/json")
        self._size = body.length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value.chunks).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for chunk in self._value.chunks:
            await writer.write(chunk)


async def answered(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> aiohttp.ClientResponse:
    """The upstream's answer to the request, which goes again (once) if the connection it took from
    the pool was closed without a word: llama-server closes its connection after every streamed
    answer while its headers say keep-alive, and a request that takes it at once is never read."""
    try:
        return await handler(request)
    except aiohttp.ServerDisconnectedError:
        if isinstance(request.body, Payload) and request.body.consumed:
            raise
        log.debug("the upstream had closed a kept connection; the request goes again on another")
        return await handler(request)


def _connect_only(config: UpstreamConfig) -> aiohttp.ClientTimeout:
    """Per request, so a reloaded connect_timeout applies at once; reads have their own limits."""
    return aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout)


class Upstream:
    """The model server as the proxy talks to it: the one session, the live upstream config and
    the repository's routing. Every request carries our key and the routing headers, and hands
    back a router's session token (a client middleware of the session)."""

    def __init__(self, config: Callable[[], UpstreamConfig], routing: Callable[[], Routing]) -> None:
        self._config = config
        self._routing = routing
        self.session = aiohttp.ClientSession(
            timeout=_connect_only(config()),
            connector=aiohttp.TCPConnector(limit=config().max_connections, keepalive_timeout=KEEPALIVE),
            auto_decompress=False,
            middlewares=(self._every_request,),
        )

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()

    @property
    def config(self) -> UpstreamConfig:
        return self._config()

    async def _every_request(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Our key for the upstream (never a client's) and the routing headers go with every
        request; a session token a router hands out comes back on the next."""
        config, routing = self._config(), self._routing()
        if request.url.origin() != URL(config.url).origin():
            return await handler(request)  # a redirect elsewhere: our key stays home
        request.headers.update({"Accept-Encoding": "identity", **routing.headers(config)})
        if config.api_key:
            request.headers["Authorization"] = f"Bearer {config.api_key}"
        response = await answered(request, handler)
        routing.remember(response.headers)
        return response

    async def send(self, path: str, body: Body, root: bool = False) -> aiohttp.ClientResponse:
        """POST the body to `path` (written chunk by chunk, with its length); return once headers arrive."""
        return await self._request("POST", url_of(self.config, path, root), BodyPayload(body), {})

    async def request_any(self, method: str, url: URL, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send a client's request on to the upstream's `url` as it came."""
        return await self._request(method, url, body or None, headers)

    async def _request(self, method: str, url: str | URL, data: Any, headers: dict[str, str]) -> aiohttp.ClientResponse:
        config = self.config
        try:
            return await self.session.request(method, url, data=data, headers=headers, timeout=_connect_only(config))
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as error:
            raise UpstreamUnavailable(f"cannot reach the upstream at {config.url}: {error}") from None
        except aiohttp.ClientError as error:
            raise UpstreamBadResponse(f"the upstream at {config.url} failed before answering: {error}") from None

    async def read_json_answer(
        self, body: Body, path: str = "/chat/completions", root: bool = False
    ) -> tuple[bytes, Any]:
        """A non-streaming exchange: the answer's bytes, untouched, and their parsed JSON."""
        data = await self.read_answer(body, path, root)
        return data, json_of(data)

    async def read_answer(self, body: Body, path: str, root: bool = False, limit: int = MAX_ANSWER) -> bytes:
        """A non-streaming exchange: the answer's bytes, at most `limit` of them."""
        config = self.config
        try:
            response = await asyncio.wait_for(self.send(path, body, root), config.first_byte_timeout)
        except asyncio.TimeoutError:
            raise no_first_byte(config) from None
        try:
            await check_status(response, config.idle_timeout)
            data = await read_all(response, config.idle_timeout, limit + 1)
        finally:
            response.close()
        if len(data) > limit:
            raise UpstreamBadResponse(f"the upstream's answer is larger than {limit} bytes; not relayed")
        return data

    async def warm_up(self, *injected: Encoded, report: Report | None = None) -> Usage | None:
        """Have the upstream process (and so cache) the `injected` messages, generating a single
        token. Sent with none, it tells how many tokens the question alone takes. With `report`,
        streamed, each progress event the upstream sends reported as it comes."""
        config = self.config
        messages = encode_json([{"role": "user", "content": "Reply with OK."}])[1:-1]
        fields: dict[str, Any] = {"model": config.model, "max_tokens": 1, "temperature": 0}
        if config.cache_salt is not None:
            fields["cache_salt"] = config.cache_salt
        if config.chat_template_kwargs:
            fields["chat_template_kwargs"] = config.chat_template_kwargs
        if report is not None:
            return await streamed(
                self, assemble(messages, encode_json({**fields, **PROGRESS_FIELDS})[1:-1], *injected), report
            )
        _, payload = await self.read_json_answer(assemble(messages, encode_json(fields)[1:-1], *injected))
        return CHAT.read_usage(payload)

    async def probe_systems(self, systems: int) -> ProxyError | None:
        """Whether the upstream's chat template takes `systems` system messages before a question:
        None if it answered, else its error (a refusal is a 4xx). One token, on a few tokens of prompt."""
        try:
            await self.warm_up(*(system_message("Answer in one word.") for _ in range(systems)))
        except ProxyError as error:
            return error
        return None

    async def fetch_models(self) -> bytes:
        """The upstream's model list, bounded by the connect timeout (a probe, not a generation)."""
        status, data = await self.brief("GET", f"{self.config.url}/models")
        if status >= 400:
            raise error_from_answer(status, data[:MAX_ERROR_BODY])
        payload = _json_or_none(data if len(data) <= MAX_ABOUT else b"")
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise UpstreamBadResponse("the upstream's /models answer is not a model list")
        return data

    async def about(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """The parsed JSON a server's own route answers with (`/props`, `/info`), bounded by the
        connect timeout; None if it answered otherwise (a 404, not JSON, too long). Raises only
        when the upstream cannot be reached or does not answer in time."""
        status, data = await self.brief(method, url, body)
        return _json_or_none(data) if status < 300 and len(data) <= MAX_ABOUT else None

    async def brief(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | bytes | None = None,
        within: float | None = None,
        limit: int = MAX_ABOUT,
    ) -> tuple[int, bytes]:
        """A short exchange about the server, not a generation: its status and at most `limit` + 1
        bytes of its answer, all `within` seconds (the connect timeout unless said)."""
        config = self.config
        within = within or config.connect_timeout
        try:
            timeout = aiohttp.ClientTimeout(total=within)
            async with self.session.request(method, url, timeout=timeout, **_sent(body)) as response:
                return response.status, await read_all(response, within, limit + 1)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"the upstream at {config.url} did not answer within {within:g}s") from None
        except aiohttp.ClientError as error:
            raise UpstreamUnavailable(f"cannot reach the upstream at {config.url}: {error}") from None


async def tokenize(upstream: Upstream, body: bytes) -> tuple[int, bytes]:
    """The server's own tokenizer on one text (`POST /tokenize` at its root, the JSON `body`
    encoded already): the status and the answer, within the idle timeout (a file of a few
    hundred KiB takes a fraction of a second)."""
    config = upstream.config
    return await upstream.brief("POST", f"{root_of(config.url)}/tokenize", body, config.idle_timeout, MAX_ANSWER)


async def streamed(upstream: Upstream, body: Body, report: Report) -> Usage | None:
    """A streamed warm-up read to its end (see `progress.py`): its usage. Until its one token, all
    of it is prefill, so the gaps between its events have the first byte's limit, not the idle one
    (a batch of a large model on a slow machine can take minutes)."""
    config = upstream.config
    try:
        response = await asyncio.wait_for(upstream.send("/chat/completions", body), config.first_byte_timeout)
    except asyncio.TimeoutError:
        raise no_first_byte(config) from None
    reader = ProgressReader(report)
    try:
        await check_status(response, config.idle_timeout)
        if response.content_type != "text/event-stream":  # it answered in one piece after all
            return CHAT.read_usage(_json_or_none(await read_all(response, config.idle_timeout, MAX_ANSWER)))
        while chunk := await next_chunk(response, max(config.idle_timeout, config.first_byte_timeout)):
            reader.feed(chunk)
    finally:
        response.close()
    return reader.usage
