"""Shared test fixtures: real git repositories, a real upstream on 127.0.0.1, the real proxy."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path
from typing import Any, Awaitable, Callable

import attrs
import pygit2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from scout_diff_cache.app import make_app
from scout_diff_cache.config import Config, load_config

SIGNATURE = pygit2.Signature("Test Author", "author@example.com", 1_700_000_000, 0)

#: A section header of the snapshot or a change header of the diff (see the README's grammar).
HEADER = re.compile(r"^=== (file|symlink|submodule): (.+) \[([^\[\]]*)\] ===$", re.M)


def headed_paths(text: str, kind: str = "file") -> list[str]:
    """The paths of the snapshot's sections (or the diff's changes) of one kind, in order."""
    return [match[2] for match in HEADER.finditer(text) if match[1] == kind]


def header_of(text: str, path: str) -> str:
    """The bracketed details of the first header for `path`."""
    found = [match[3] for match in HEADER.finditer(text) if match[2] == path]
    assert found, f"no header for {path}"
    return found[0]


class GitRepo:
    """A real repository in a temp dir; commits have fixed authors and times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repo = pygit2.init_repository(str(path), initial_head="main")

    def write(self, name: str, content: str | bytes) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)
        return target

    def stage(self, *names: str) -> None:
        index = self.repo.index
        for name in names:
            index.add(name)
        index.write()

    def commit(self, message: str = "change", *, add_all: bool = True) -> str:
        index = self.repo.index
        if add_all:
            index.add_all()
        index.write()
        tree = index.write_tree()
        parents = [] if self.repo.head_is_unborn else [self.repo.head.target]
        oid = self.repo.create_commit("HEAD", SIGNATURE, SIGNATURE, message, tree, parents)
        return str(oid)

    def head(self) -> str:
        return str(self.repo.head.target)


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "# Demo\n\nA small project.\n")
    repo.write("src/app.py", "def main():\n    return 'hello'\n")
    repo.write("src/util.py", "def add(a, b):\n    return a + b\n")
    repo.commit("initial")
    return repo


@attrs.define
class Seen:
    """One request as the fake upstream received it."""

    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


Behaviour = Callable[[web.Request, "FakeUpstream"], Awaitable[web.StreamResponse]]


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 that records requests and does what it is told."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.behaviour: Behaviour = answer_json
        self.cancelled = 0
        self.release = asyncio.Event()
        self.models: web.StreamResponse | None = None
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1"))

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path, dict(request.headers), await request.read()))
        try:
            return await self.behaviour(request, self)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def handle_models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})


def completion(content: str = "ok", cached: int | None = 90) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage,
    }


def sse_chunk(content: str) -> bytes:
    payload = {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def answer_json(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    return web.json_response(completion())


async def answer_stream(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in ("Hello", " world"):
        await response.write(sse_chunk(word))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def hang(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    """Never answer: the proxy must give up (timeout) or hang up (client gone)."""
    await asyncio.sleep(30)
    raise AssertionError("the proxy should have hung up")


async def start_upstream(aiohttp_server: Any) -> FakeUpstream:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle_chat)
    app.router.add_get("/v1/models", fake.handle_models)
    fake.server = await aiohttp_server(app, host="127.0.0.1")
    return fake


@pytest.fixture
async def upstream(aiohttp_server: Any) -> FakeUpstream:
    return await start_upstream(aiohttp_server)


def write_config(directory: Path, sections: dict[str, dict[str, str]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            value = textwrap.indent(value, "    ").lstrip() if "\n" in value else value
            lines.append(f"{key} = {value}")
    path = directory / "scout.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def proxy_config(tmp_path: Path, repo: GitRepo, upstream_url: str, **sections: dict[str, str]) -> Config:
    merged: dict[str, dict[str, str]] = {
        "repository": {"path": str(repo.path)},
        "upstream": {"url": upstream_url, "connect_timeout": "2s", "first_byte_timeout": "10s", "idle_timeout": "10s"},
        "context": {"state_dir": str(tmp_path / "state")},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return load_config(write_config(tmp_path, merged))


ProxyFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_proxy(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, aiohttp_client: Any) -> ProxyFactory:
    async def factory(repo: GitRepo | None = None, url: str | None = None, **sections: dict[str, str]) -> TestClient:
        config = proxy_config(tmp_path, repo or git_repo, url or upstream.url, **sections)
        return await aiohttp_client(make_app(config))

    return factory


def is_warmup(body: dict[str, Any]) -> bool:
    return body.get("max_tokens") == 1 and body["messages"][-1]["content"] == "Reply with OK."


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "scout", "messages": list(messages) or [{"role": "user", "content": "Where is main?"}], **fields}
