"""`make routers`: the proxy behind real routers (vllm-router, smg) in front of three fake upstreams.

Each router runs with its consistent-hash policy in front of three OpenAI-compatible fakes on
127.0.0.1 that count what reaches them; the proxy (the real app) points at the router. Asserts
where requests land (one upstream per repository, whatever the client's key), and that a body of
tens of MB passes through; reports the counts without the key and the time a router adds. `make
routers` installs both routers from PyPI; `make test` does not run this module.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pygit2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler

from scout_diff_cache.app import make_app
from scout_diff_cache.config import Config

from support import GitRepo, completion, event_stream, free_port, is_warmup, proxy_config, snapshot_ready, sse_chunk

pytestmark = pytest.mark.routers

#: The header each router hashes (both are sent; smg forwards only its own).
ROUTERS = {"vllm-router": "x-session-id", "smg": "x-smg-routing-key"}
UPSTREAMS = 3
#: What the fakes serve: smg routes a body's `model` only to workers that list it in /v1/models.
MODEL = "upstream-model"
#: What the module prints at the end, per router.
REPORT: dict[str, list[str]] = collections.defaultdict(list)


# --- three fake upstreams, in a thread of their own so that module-scoped routers can use them ---


@attrs.frozen
class Hit:
    """One chat request as an upstream received it (the body summed up, not kept)."""

    upstream: int
    headers: dict[str, str]
    size: int
    digest: str  #: of the raw bytes
    prompt: str  #: of the messages' contents: what the model would read
    warmup: bool
    salt: str | None


class Fleet:
    """Fake OpenAI-compatible upstreams on 127.0.0.1: chat (JSON, or SSE when asked), models, health."""

    def __init__(self, count: int) -> None:
        self.hits: list[Hit] = []
        self.sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in self.sockets]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fleet", daemon=True)
        self.runners: list[web.AppRunner] = []

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _start(self) -> None:
        for index, sock in enumerate(self.sockets):
            app = web.Application(client_max_size=1 << 30)
            app.router.add_post("/v1/chat/completions", self._chat(index))
            app.router.add_get("/v1/models", models)
            app.router.add_get("/health", health)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self.runners.append(runner)

    async def _stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()

    def _chat(self, index: int) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            body = json.loads(raw)
            prompt = hashlib.sha256()
            for message in body["messages"]:
                prompt.update(json.dumps(message["content"]).encode())
            self.hits.append(
                Hit(
                    index,
                    {name.lower(): value for name, value in request.headers.items()},
                    len(raw),
                    hashlib.sha256(raw).hexdigest(),
                    prompt.hexdigest(),
                    is_warmup(body),
                    body.get("cache_salt"),
                )
            )
            if not body.get("stream"):
                return web.json_response(completion(f"from upstream {index}"))
            response = await event_stream(request)
            await response.write(sse_chunk(f"from upstream {index}"))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        return handle

    def mark(self) -> int:
        return len(self.hits)

    def since(self, mark: int) -> list[Hit]:
        return self.hits[mark:]


async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


def counts(hits: list[Hit]) -> list[int]:
    """Requests per upstream, in upstream order."""
    tally = collections.Counter(hit.upstream for hit in hits)
    return [tally[index] for index in range(UPSTREAMS)]


# --- the routers -------------------------------------------------------------------------------


@attrs.define
class Router:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def router_command(name: str, port: int, workers: list[str]) -> list[str]:
    """Each router with its consistent-hash policy; metrics on loopback (both default to 0.0.0.0:29000)."""
    common = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers]
    common += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    common += ["--worker-startup-check-interval", "1"]
    binary = str(Path(sys.executable).parent / name)
    if name == "vllm-router":
        return [binary, *common, "--policy", "consistent_hash"]
    return [binary, "launch", *common, "--policy", "consistent_hashing"]


def registered(router: Router) -> bool:
    """Every worker registered and healthy (`GET /workers`, which both routers serve)."""
    try:
        with urllib.request.urlopen(f"{router.url}/workers", timeout=2) as response:
            workers = json.load(response)["workers"]
    except (OSError, ValueError, KeyError):
        return False
    return len(workers) == UPSTREAMS and all(
        worker.get("is_healthy") and worker.get("status", "ready") == "ready" for worker in workers
    )


def start_router(name: str, workers: list[str], directory: Path) -> Router:
    port = free_port()
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            router_command(name, port, workers),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
        )
    router = Router(name, port, process, log)
    deadline = time.monotonic() + 60
    while not registered(router):
        if process.poll() is not None or time.monotonic() > deadline:
            router.stop()
            raise AssertionError(f"{name} did not register its {UPSTREAMS} workers:\n{router.log_tail()}")
        time.sleep(0.1)
    return router


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    fleet = Fleet(UPSTREAMS)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()
        if REPORT:
            print(f"\nthe proxy behind each router, {UPSTREAMS} fake upstreams (requests per upstream):")
            for name, lines in REPORT.items():
                print(f"{name}:\n" + "\n".join(f"  {line}" for line in lines))


@pytest.fixture(scope="module")
def routers(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Router]]:
    directory = tmp_path_factory.mktemp("routers")
    started: dict[str, Router] = {}
    try:
        for name in ROUTERS:
            started[name] = start_router(name, fleet.urls, directory)
        yield started
    finally:
        for router in started.values():
            router.stop()


@pytest.fixture(params=list(ROUTERS))
def router(request: pytest.FixtureRequest, routers: dict[str, Router]) -> Router:
    return routers[request.param]


# --- repositories and questions ----------------------------------------------------------------


def make_repository(path: Path, name: str) -> GitRepo:
    """A small repository whose root commit (so its routing key) is its own."""
    repo = GitRepo(path)
    repo.write("README.md", f"# {name}\n")
    repo.write("src/app.py", f"def main():\n    return {name!r}\n")
    repo.commit("initial")
    return repo


def behind(tmp_path: Path, repo: GitRepo, url: str, **sections: dict[str, str]) -> Config:
    """The proxy's config for a repository, with the model the fakes serve (warm-ups name it too)."""
    upstream = {"model": MODEL, **sections.pop("upstream", {})}
    return proxy_config(tmp_path, repo, url, upstream=upstream, **sections)


async def ask(
    client: TestClient,
    question: str,
    *,
    history: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> str:
    messages = [*(history or []), {"role": "user", "content": question}]
    body = {"model": MODEL, "messages": messages, **fields}
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return await response.text()


async def until_hits(fleet: Fleet, mark: int, condition: Callable[[list[Hit]], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition(fleet.since(mark)):
        assert asyncio.get_running_loop().time() < deadline, f"not seen in time: {counts(fleet.since(mark))}"
        await asyncio.sleep(0.02)


def routing_keys(hits: list[Hit], header: str) -> set[str | None]:
    return {hit.headers.get(header) for hit in hits}


# --- tests -------------------------------------------------------------------------------------


async def test_every_request_of_a_repository_lands_on_one_upstream(
    router: Router, fleet: Fleet, tmp_path: Path, aiohttp_client: Any
) -> None:
    repo = make_repository(tmp_path / "repo", "one")
    mark = fleet.mark()
    config = behind(
        tmp_path, repo, f"{router.url}/v1", context={"keepalive_interval": "200ms"}, upstream={"cache_salt": "team-a"}
    )
    client = await aiohttp_client(make_app(config))
    await snapshot_ready(client)
    await ask(client, "Where is main?")
    repo.write("src/app.py", "def main():\n    return 'edited'\n")
    await ask(client, "What did I change?")
    repo.commit("edit")
    history = [{"role": "user", "content": "What did the commit do?"}]
    history.append({"role": "assistant", "content": await ask(client, history[0]["content"])})
    await ask(client, "And then?", history=history)
    assert "data: [DONE]" in await ask(client, "Stream it.", stream=True)
    rebase = await client.post("/admin/rebase")
    assert rebase.status == 200, await rebase.text()
    await ask(client, "After the rebase?")
    pinged = fleet.mark()
    await until_hits(fleet, pinged, lambda hits: any(hit.warmup for hit in hits))  # a keep-alive ping

    await client.close()  # no more pings
    cloned = fleet.mark()
    clone = pygit2.clone_repository(str(repo.path), str(tmp_path / "clone"))
    clone_config = behind(tmp_path / "clone", GitRepo(Path(clone.workdir)), f"{router.url}/v1")
    await ask(await aiohttp_client(make_app(clone_config)), "From a clone?")

    hits = fleet.since(mark)
    keys = routing_keys(hits, ROUTERS[router.name])
    REPORT[router.name].append(
        f"one repository, {len(hits)} requests ({sum(hit.warmup for hit in hits)} warm-ups and pings,"
        f" a clone's included), key {sorted(map(str, keys))}: per upstream {counts(hits)}"
    )
    assert sum(hit.warmup for hit in hits) >= 2
    assert {hit.salt for hit in hits[: cloned - mark]} == {"team-a"}  # every router keeps it in every body
    (key,) = keys
    assert key is not None and re.fullmatch(r"scout-[0-9a-f]{16}", key), key
    assert len({hit.upstream for hit in hits}) == 1, counts(hits)


async def test_repositories_with_their_own_roots_spread_over_the_upstreams(
    router: Router, fleet: Fleet, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Each repository has its own key; the hash ring spreads keys, so enough repositories reach
    every upstream (the ring depends on the workers' ports, so the number needed varies by run)."""
    mark = fleet.mark()
    where: dict[str, int] = {}
    keys: set[str | None] = set()
    for index in range(40):
        if index >= 6 and len(set(where.values())) == UPSTREAMS:
            break
        repo = make_repository(tmp_path / f"repo{index}", f"project {index}")
        client = await aiohttp_client(make_app(behind(tmp_path / f"repo{index}", repo, f"{router.url}/v1")))
        before = fleet.mark()
        await ask(client, "Where is main?")
        await ask(client, "And again?")
        (upstream,) = {hit.upstream for hit in fleet.since(before)}  # each repository on one upstream
        keys |= routing_keys(fleet.since(before), ROUTERS[router.name])
        where[f"project {index}"] = upstream
        await client.close()
    hits = fleet.since(mark)
    REPORT[router.name].append(f"{len(where)} repositories, routing key on: requests per upstream {counts(hits)}")
    assert len(keys) == len(where) and None not in keys
    assert len(set(where.values())) == UPSTREAMS, where


async def test_a_clients_own_key_never_decides_the_route(
    router: Router, fleet: Fleet, tmp_path: Path, aiohttp_client: Any
) -> None:
    repo = make_repository(tmp_path / "repo", "keyed")
    clients = [f"client-key-{index}" for index in range(8)]
    keys = tmp_path / "clients.keys"
    keys.write_text("\n".join(clients) + "\n")
    config = behind(tmp_path, repo, f"{router.url}/v1", server={"api_keys_file": str(keys)})
    client = await aiohttp_client(make_app(config))
    mark = fleet.mark()
    for key in clients:
        await ask(client, f"Asked with {key}", headers={"Authorization": f"Bearer {key}"})
    hits = fleet.since(mark)
    REPORT[router.name].append(f"{len(clients)} client keys, one repository: per upstream {counts(hits)}")
    assert len({hit.upstream for hit in hits}) == 1, counts(hits)
    assert not any(key in hit.headers.get("authorization", "") for hit in hits for key in clients)


async def test_without_the_key_each_router_does_what_it_documents(
    router: Router, fleet: Fleet, tmp_path: Path, aiohttp_client: Any
) -> None:
    """`routing_key = off`: vllm-router hashes an empty key (every repository on one upstream); smg
    picks a worker at random (one repository's requests scatter, and its cache with them)."""
    mark = fleet.mark()
    for index in range(6):
        repo = make_repository(tmp_path / f"repo{index}", f"project {index}")
        config = behind(tmp_path / f"repo{index}", repo, f"{router.url}/v1", upstream={"routing_key": "off"})
        client = await aiohttp_client(make_app(config))
        for turn in range(4):
            await ask(client, f"Question {turn}?")
        await client.close()
    hits = fleet.since(mark)
    REPORT[router.name].append(f"6 repositories, routing key off: requests per upstream {counts(hits)}")
    assert routing_keys(hits, ROUTERS[router.name]) == {None}
    if router.name == "vllm-router":
        assert len({hit.upstream for hit in hits}) == 1, counts(hits)
    else:
        assert len({hit.upstream for hit in hits}) > 1, counts(hits)


#: The generated repository's size: tens of MB, far past smg's 1 MiB parse limit.
BIG_FILES, BIG_FILE_BYTES = 240, 100_000
TIMED = 7


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    """About 24 MB of plain source-like text in 240 files (deterministic, nothing secret-looking)."""
    repo = GitRepo(tmp_path_factory.mktemp("big") / "repo")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "value", "count", "index", "total", "result"]
    for file in range(BIG_FILES):
        lines: list[str] = []
        size, n = 0, file
        while size < BIG_FILE_BYTES:
            n = (n * 1103515245 + 12345) % 2**31
            line = f"def f_{file}_{len(lines)}({words[n % 10]}, {words[n // 10 % 10]}): return {n % 9973}\n"
            lines.append(line)
            size += len(line)
        repo.write(f"pkg/m{file:03}.py", "".join(lines))
    repo.commit("initial")
    return repo


async def timed(client: TestClient, fleet: Fleet, question: str) -> tuple[float, Hit]:
    """Seconds for one question, and the one request it made upstream."""
    mark = fleet.mark()
    started = time.perf_counter()
    await ask(client, question)
    seconds = time.perf_counter() - started
    (hit,) = fleet.since(mark)
    return seconds, hit


async def router_alone(router: Router, fleet: Fleet, repo: GitRepo) -> tuple[float, float]:
    """Median seconds for the repository's text as one chat body, posted straight to an upstream
    and through the router, in turns: the router's own cost, without the proxy's."""
    text = "".join(path.read_text() for path in sorted((repo.path / "pkg").iterdir()))
    body = json.dumps({"model": MODEL, "max_tokens": 1, "messages": [{"role": "system", "content": text}]}).encode()
    headers = {"Content-Type": "application/json", "X-Session-ID": "alone", "X-SMG-Routing-Key": "alone"}
    seconds: tuple[list[float], list[float]] = ([], [])
    async with aiohttp.ClientSession() as session:
        for _ in range(TIMED):
            for url, sample in zip((fleet.urls[0], router.url), seconds, strict=True):
                started = time.perf_counter()
                async with session.post(f"{url}/v1/chat/completions", data=body, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    await response.read()
                sample.append(time.perf_counter() - started)
    return statistics.median(seconds[0]), statistics.median(seconds[1])


async def snapshot_ready_within(client: TestClient, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (health := await (await client.get("/health")).json())["snapshot"]["state"] != "ready":
        assert asyncio.get_running_loop().time() < deadline, f"snapshot not ready: {health}"
        await asyncio.sleep(0.1)


async def test_a_body_of_tens_of_megabytes_passes_through(
    router: Router, fleet: Fleet, big_repo: GitRepo, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Timed in turns (straight to an upstream, then through the router, the same question), so
    that both see the same machine; the medians are printed, not asserted."""
    sections = {"repository": {"max_snapshot_bytes": "64MiB"}, "upstream": {"first_byte_timeout": "60s"}}
    clients = []
    for name, url in (("direct", fleet.urls[0]), ("routed", router.url)):
        (tmp_path / name).mkdir()
        clients.append(await aiohttp_client(make_app(behind(tmp_path / name, big_repo, f"{url}/v1", **sections))))
    for client in clients:
        await snapshot_ready_within(client, 120)
        await ask(client, "Untimed first question?")
    runs: dict[str, tuple[list[float], list[Hit]]] = {"direct": ([], []), "routed": ([], [])}
    for index in range(TIMED):
        for name, client in zip(runs, clients, strict=True):
            seconds, hit = await timed(client, fleet, f"Timed question {index}?")
            runs[name][0].append(seconds)
            runs[name][1].append(hit)
    (direct, direct_hits), (routed, routed_hits) = runs["direct"], runs["routed"]
    alone = await router_alone(router, fleet, big_repo)
    size = max(hit.size for hit in routed_hits)
    overhead = statistics.median(routed) - statistics.median(direct)
    same_bytes = [hit.digest for hit in direct_hits] == [hit.digest for hit in routed_hits]
    REPORT[router.name].append(
        f"{size / 1e6:.1f} MB bodies, median per request {statistics.median(direct) * 1000:.0f} ms"
        f" straight to an upstream, {statistics.median(routed) * 1000:.0f} ms through the router"
        f" ({overhead * 1000:+.0f} ms); bytes unchanged: {same_bytes}; the same size posted without the proxy:"
        f" {alone[0] * 1000:.0f} ms straight, {alone[1] * 1000:.0f} ms routed ({(alone[1] - alone[0]) * 1000:+.0f} ms)"
    )
    assert size > 20e6
    assert len({hit.upstream for hit in routed_hits}) == 1
    assert [hit.prompt for hit in routed_hits] == [hit.prompt for hit in direct_hits]  # the model reads the same
