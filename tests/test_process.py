"""The real `python -m scout_diff_cache serve` process: startup, logs, restarts and shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from support import (
    FakeUpstream,
    GitRepo,
    ProxyProcess,
    answer_stream,
    chat,
    free_port,
    write_config,
)

#: Writes a config on a free port (with any extra `[server]` settings) and returns its process, not yet started.
ProcessFactory = Callable[..., ProxyProcess]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def proxy_factory(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream) -> ProcessFactory:
    def make(**server: str) -> ProxyProcess:
        port = free_port()
        config = write_config(
            tmp_path,
            {
                "server": {"port": str(port), **server},
                "upstream": {"url": upstream.url, "api_key": "sk-never-logged"},
                "repository": {"path": "repo"},
                "context": {"state_dir": "state"},
            },
        )
        return ProxyProcess(config, tmp_path / f"proxy-{port}.log")

    return make


async def test_two_separately_started_processes_send_byte_identical_snapshots(
    proxy_factory: ProcessFactory,
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    for _ in range(2):
        async with proxy_factory() as proxy:
            async with session.post(f"{proxy.url}/v1/chat/completions", json=chat()) as response:
                assert response.status == 200
            assert await proxy.stop() == 0
    first, second = (seen.raw.split(b',{"role":"system"', 1)[0] for seen in upstream.asked)
    assert first == second and b"=== file: src/app.py [2 lines] ===" in first


async def test_logs_say_what_was_loaded_and_never_contents_or_keys(
    proxy_factory: ProcessFactory,
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    async with proxy_factory() as proxy:
        body = chat({"role": "user", "content": "PRIVATE-QUESTION-TEXT"})
        headers = {"Authorization": "Bearer sk-client"}
        async with session.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200
        await proxy.stop()
    log = proxy.log.read_text()
    assert f"config: {proxy.config}" in log
    assert "POST /v1/chat/completions 200" in log and "cached_tokens=90" in log
    for secret in ("PRIVATE-QUESTION-TEXT", "sk-never-logged", "sk-client", "return 'hello'"):
        assert secret not in log


async def test_sigterm_lets_an_in_flight_stream_finish_then_exits_0(
    proxy_factory: ProcessFactory,
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    async def slow(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return await answer_stream(request, fake)

    upstream.behaviour = slow
    async with proxy_factory(shutdown_grace="20s") as proxy:
        async with session.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True)) as response:
            await asyncio.sleep(0.3)
            proxy.send_signal(signal.SIGTERM)
            text = await response.text()
        assert text.endswith("data: [DONE]\n\n")
        assert await proxy.wait(30) == 0  # one signal only, as systemd sends
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{proxy.url}/health"):
            pass
