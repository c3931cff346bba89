"""The /v1 pass-through: only inference routes reach the upstream, by paths that cannot mean others.

The escape paths go over a raw socket, as a hostile client would send them (an HTTP client
library would normalise them first), to a proxy in front of a raw upstream that records every
request line exactly as it arrived, wherever it points.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from scout_diff_cache.config import UpstreamConfig
from scout_diff_cache.errors import InvalidRequest, NotFound
from scout_diff_cache.passthrough import DEFAULT_ROUTES, forwarded
from scout_diff_cache.upstream.client import url_under

from support import FakeUpstream, GitRepo, ProxyFactory, ProxyProcess, free_port, until_async, write_config

#: Paths that could reach another route once decoded or joined: refused before any upstream work.
ESCAPES = [
    "/v1/../slots/0?action=erase",
    "/v1/%2e%2e/flush_cache",
    "/v1/..%2fflush_cache",
    "/v1/%2e%2e%2f%2e%2e%2freset_prefix_cache",
    "/v1/%2E%2E/x",
    "/v1/./completions",
    "/v1/completions/..",
    "/v1/completions/../../slots/0",
    "/v1/embeddings/%2e%2e/%2e%2e/flush_cache",
    "/v1/a%2fb",
    "/v1/embeddings%2F..%2F..%2Fflush_cache",
    "/v1/a%5cb",
    "/v1/a%5Cb",
    "/v1/a\\b",
    "/v1/..\\slots\\0",
    "/v1//completions",
    "/v1/completions/",
    "/v1/%252e%252e/flush_cache",
    "/v1/%65mbeddings",
    "/v1/completions;x=1",
    "/v1/a%00b",
    "/v1/completions%3Fx=1",
]

#: Plain paths to routes that are not inference: not found, nothing sent.
ELSEWHERE = [
    "/v1/slots/0?action=erase",
    "/v1/load_lora_adapter",
    "/v1/flush_cache",
    "/v1/update_weights_from_disk",
    "/v1/audio",
    "/v1/embeddingsx",
    "/v1/files/f1",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_that_could_mean_another_is_refused(path: str) -> None:
    with pytest.raises(InvalidRequest, match="is refused: it has"):
        forwarded(path.partition("?")[0], ())


@pytest.mark.parametrize("path", ELSEWHERE)
def test_a_route_not_listed_is_not_found(path: str) -> None:
    with pytest.raises(NotFound, match="not a route the proxy serves or passes on"):
        forwarded(path.partition("?")[0], ())


def test_listed_routes_and_the_routes_below_them_are_forwarded_as_their_segments() -> None:
    assert forwarded("/v1/embeddings", ()) == ("embeddings",)
    assert forwarded("/v1/audio/transcriptions", ()) == ("audio", "transcriptions")
    assert forwarded("/v1/files/file-a_1.b~c", ("files",)) == ("files", "file-a_1.b~c")
    assert all(forwarded(f"/v1/{route}", ()) == tuple(route.split("/")) for route in DEFAULT_ROUTES)


def test_the_upstream_url_is_the_base_and_the_segments_as_they_came() -> None:
    config = UpstreamConfig(url="http://127.0.0.1:8000/v1")
    url = url_under(config, ("audio", "speech"), "x=1&y=%2F&z=%2e%2e")
    assert str(url) == "http://127.0.0.1:8000/v1/audio/speech?x=1&y=%2F&z=%2e%2e"
    bare = url_under(attrs.evolve(config, url="http://127.0.0.1:8000"), ("embeddings",), "")
    assert bare.raw_path_qs == "/embeddings"


@attrs.define
class Recorded:
    """What the raw upstream received: each request line's target as sent, and its key."""

    targets: list[str] = attrs.Factory(list)
    keys: list[str | None] = attrs.Factory(list)


@pytest.fixture
async def recorded(aiohttp_raw_server: Any) -> tuple[Recorded, TestServer]:
    seen = Recorded()

    async def record(request: web.BaseRequest) -> web.Response:
        seen.targets.append(f"{request.method} {request.raw_path}")
        seen.keys.append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    return seen, await aiohttp_raw_server(record, host="127.0.0.1")


async def raw_request(client: TestClient, method: str, target: str) -> tuple[int, bytes]:
    """Send a request line as written, with a client key and a small body; the status and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = f"{method} {target} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer client-key\r\n"
    writer.write(f"{head}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status, _, body = answer.partition(b"\r\n\r\n")
    return int(status.split()[1]), body


async def test_over_a_raw_socket_only_listed_routes_arrive_upstream_exactly_as_sent(
    make_proxy: ProxyFactory, recorded: tuple[Recorded, TestServer], tmp_path: Path
) -> None:
    seen, upstream = recorded
    keys = tmp_path / "keys"
    keys.write_text("client-key\n")
    client = await make_proxy(
        url=str(upstream.make_url("/v1")),
        server={"api_keys_file": str(keys)},
        # a configured window: the proxy asks the upstream nothing of its own
        upstream={"api_key": "upstream-key", "passthrough_routes": "files, batches", "context_window": "8192"},
        context={"inject": "false"},
    )
    escapes = [*ESCAPES, f"http://proxy{ESCAPES[0]}"]  # the absolute form, too
    for target in escapes:
        status, body = await raw_request(client, "POST", target)
        assert status == 400, (target, body)
        assert json.loads(body)["error"]["code"] == "invalid_request"
    for target in [*ELSEWHERE[:-1], "//v1/completions", "/v1/chat/completions/x"]:
        status, body = await raw_request(client, "POST", target)
        assert status == 404, (target, body)
        assert json.loads(body)["error"]["code"] == "not_found"
    assert seen.targets == []
    allowed = [
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/completions?x=1&y=%2F&z=..%2f"),
        ("POST", "/v1/audio/transcriptions"),
        ("DELETE", "/v1/files/f1"),
        ("GET", "/v1/batches"),
    ]
    for method, target in allowed:
        status, body = await raw_request(client, method, target)
        assert status == 200, (target, body)
    assert seen.targets == [f"{method} {target}" for method, target in allowed]
    assert seen.keys == ["Bearer upstream-key"] * len(allowed)


async def test_routes_a_reload_adds_are_forwarded_from_then_on(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream
) -> None:
    port = free_port()
    sections = {
        "server": {"port": str(port)},
        "upstream": {"url": upstream.url},
        "repository": {"path": str(git_repo.path)},
        "context": {"state_dir": str(tmp_path / "state"), "usage": "upstream"},
    }
    config = write_config(tmp_path, sections)
    async with ProxyProcess(config, tmp_path / "proxy.log") as proxy, ClientSession() as session:

        async def status() -> int:
            async with session.post(f"{proxy.url}/v1/files", json={}) as answer:
                return answer.status

        assert await status() == 404
        sections["upstream"]["passthrough_routes"] = "files"
        write_config(tmp_path, sections)
        proxy.send_signal(signal.SIGHUP)
        await until_async(status, 201)  # what the fake upstream answers on routes it does not know
    assert upstream.asked[-1].path == "/v1/files"
