"""What the tests share: real git repositories, a fake upstream, configs, waits, the real process.

The fixtures that hand these out are in conftest.py; test modules import from here, never from
each other. `ProxyProcess` is the one way the suite (and `tests/tools/benchmark`) runs
`python -m scout_diff_cache serve` as a child process.
"""

from __future__ import annotations

import asyncio
import configparser
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pygit2
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

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


# --- repositories ------------------------------------------------------------------------------


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


# --- the fake upstream -------------------------------------------------------------------------


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
    """An OpenAI-compatible server on 127.0.0.1 that records requests and does what it is told.

    An exception a handler raises reaches the proxy only as a 500, so it is also recorded in
    `errors`, and the fixture that started the upstream fails the test if any was. The proxy
    hanging up is not an error: it cancels the handler (counted in `cancelled`) or, if it happens
    mid-write, makes the write raise ConnectionResetError (counted in `hung_up`). A behaviour that
    finds something wrong calls `fail` (or raises).
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.behaviour: Behaviour = answer_json
        self.cancelled = 0
        self.hung_up = 0
        self.errors: list[BaseException] = []
        self.release = asyncio.Event()
        self.server: TestServer | None = None
        #: What the server says of itself at its own routes, by "METHOD /path" (llama.cpp's
        #: "GET /props", TGI's "GET /info", Ollama's "GET /api/ps", "GET /v1/models"); else a 404.
        self.about: dict[str, Any] = {}
        #: The routes asked about, in order ("GET /props", ...).
        self.asked_about: list[str] = []
        #: With a tokenizer (text -> tokens), `POST /tokenize` answers as llama.cpp does.
        self.tokenizer: Callable[[str], int] | None = None
        #: The texts `/tokenize` was asked to count, in order.
        self.tokenized: list[str] = []

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1"))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_post("/v1/responses", self.handle_chat)
        app.router.add_post("/v1/messages", self.handle_chat)
        app.router.add_post("/v1/messages/count_tokens", self.handle_chat)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_route("*", "/v1/{tail:.+}", self.handle_chat)
        app.router.add_route("*", "/{tail:.*}", self.handle_about)
        return app

    @property
    def asked(self) -> list[Seen]:
        """The requests that were not warm-ups (nor the proxy's measuring of its injected tokens)."""
        return [seen for seen in self.seen if not (seen.raw.startswith(b"{") and is_warmup(seen.json))]

    def fail(self, message: str) -> None:
        """Record a failed expectation: the test fails at teardown, with this message."""
        self.errors.append(AssertionError(message))

    def report(self) -> str:
        """What the handlers raised or recorded, with tracebacks where there are any."""
        return "\n".join("".join(traceback.format_exception(error)) for error in self.errors)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path_qs, dict(request.headers), await request.read()))
        try:
            return await self.behaviour(request, self)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except ConnectionResetError:
            self.hung_up += 1
            raise
        except Exception as error:
            self.errors.append(error)
            raise

    async def handle_models(self, request: web.Request) -> web.StreamResponse:
        self.asked_about.append("GET /v1/models")
        listed = {"object": "list", "data": [{"id": "upstream-model", "object": "model"}]}
        return web.json_response(self.about.get("GET /v1/models", listed))

    async def handle_about(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        self.asked_about.append(key)
        if key == "POST /tokenize" and self.tokenizer is not None:
            body = await request.json()
            if "content" not in body:
                raise web.HTTPBadRequest()
            self.tokenized.append(body["content"])
            return web.json_response({"tokens": [7] * self.tokenizer(body["content"])})
        if key not in self.about:
            raise web.HTTPNotFound()
        return web.json_response(self.about[key])


class Tap:
    """A recording reverse proxy on 127.0.0.1 in front of a real model server: what that server
    received, to parse, while the server itself answers."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[Seen] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.cleanup_ctx.append(self._session)
        return app

    async def _session(self, app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            app[TAP_SESSION] = session
            yield

    async def forward(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.path_qs, dict(request.headers), raw))
        headers = {name: request.headers[name] for name in ("Content-Type", "Authorization") if name in request.headers}
        session = request.app[TAP_SESSION]
        async with session.request(request.method, self.target + request.path_qs, data=raw, headers=headers) as answer:
            kind = answer.headers.get("Content-Type", "application/json")
            response = web.StreamResponse(status=answer.status, headers={"Content-Type": kind})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


TAP_SESSION = web.AppKey("tap_session", aiohttp.ClientSession)


#: What the `make_upstream` fixture hands out: `await make_upstream(port=None)` starts another one.
UpstreamFactory = Callable[..., Awaitable[FakeUpstream]]


def completion(content: str = "ok", cached: int | None = 90, prompt: int = 100) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
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


def counted(raw: bytes) -> int:
    """The fake's token count of a body: a token per 4 bytes, so more text is more tokens."""
    return len(raw) // 4


def response_object(prompt: int, text: str = "ok", status: str = "completed") -> dict[str, Any]:
    """A Responses API answer, usage as llama.cpp reports it (input_tokens include the cached)."""
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": prompt * 9 // 10},
        "output_tokens": 1,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + 1,
    }
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "upstream-model",
        "output": [message] if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage if status == "completed" else None,
    }


def anthropic_message(prompt: int, text: str = "ok") -> dict[str, Any]:
    """A Messages API answer, usage as llama.cpp reports it (input_tokens exclude cache reads)."""
    cached = prompt * 9 // 10
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "upstream-model",
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt - cached, "cache_read_input_tokens": cached, "output_tokens": 1},
    }


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


async def answer_json(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    raw = await request.read()
    if request.path == "/v1/responses":
        return web.json_response(response_object(counted(raw)))
    if request.path == "/v1/messages":
        return web.json_response(anthropic_message(counted(raw)))
    if request.path == "/v1/messages/count_tokens":
        return web.json_response({"input_tokens": counted(raw)})
    if request.path != "/v1/chat/completions":  # any other route: say what arrived
        return web.json_response({"method": request.method, "path": request.path_qs}, status=201)
    return web.json_response(completion())


async def event_stream(request: web.Request) -> web.StreamResponse:
    """A server-sent event stream with its headers sent: how every streaming upstream answers."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


async def answer_stream(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    response = await event_stream(request)
    for event in stream_events(request.path, counted(await request.read())):
        await response.write(event)
    await response.write_eof()
    return response


def stream_events(path: str, prompt: int) -> list[bytes]:
    """A streamed answer "Hello world" as llama.cpp sends it on each API."""
    if path == "/v1/responses":
        item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        return [
            sse_event(
                "response.created", {"type": "response.created", "response": response_object(0, "", "in_progress")}
            ),
            sse_event(
                "response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}
            ),
            sse_event("response.content_part.added", {"type": "response.content_part.added", **where, "part": part}),
            *(
                sse_event("response.output_text.delta", {"type": "response.output_text.delta", **where, "delta": word})
                for word in ("Hello", " world")
            ),
            sse_event(
                "response.output_text.done", {"type": "response.output_text.done", **where, "text": "Hello world"}
            ),
            sse_event(
                "response.completed", {"type": "response.completed", "response": response_object(prompt, "Hello world")}
            ),
        ]
    if path == "/v1/messages":
        start = {**anthropic_message(prompt, ""), "stop_reason": None}
        start["usage"] = {**start["usage"], "output_tokens": 0}
        return [
            sse_event("message_start", {"type": "message_start", "message": start}),
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            sse_event("ping", {"type": "ping"}),
            *(
                sse_event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                )
                for word in ("Hello", " world")
            ),
            sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 2},
                },
            ),
            sse_event("message_stop", {"type": "message_stop"}),
        ]
    return [sse_chunk("Hello"), sse_chunk(" world"), b"data: [DONE]\n\n"]


async def hang(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    """Never answer: the proxy must give up (timeout) or hang up (client gone)."""
    await asyncio.sleep(30)
    upstream.fail("the proxy should have hung up")
    return web.json_response(completion())


class PrefixCache:
    """A behaviour that keeps a prefix cache as a model server does, a token per 4 bytes: each
    prompt (its system text, then its tools, then its other messages, as templates render them)
    is cached as far as it shares its start with an earlier one. `forget()` is a restart."""

    def __init__(self) -> None:
        self.prompts: list[bytes] = []

    def forget(self) -> None:
        self.prompts.clear()

    async def __call__(self, request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
        body = json.loads(await request.read())
        rendered = rendered_prompt(body)
        shared = max((shared_start(rendered, earlier) for earlier in self.prompts), default=0)
        self.prompts.append(rendered)
        prompt, cached = len(rendered) // 4, shared // 4
        if request.path == "/v1/messages":
            usage = {"input_tokens": prompt - cached, "cache_read_input_tokens": cached, "output_tokens": 1}
            return web.json_response({**anthropic_message(prompt), "usage": usage})
        answer = completion()
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": 1,
            "total_tokens": prompt + 1,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        return web.json_response(answer)


def shared_start(a: bytes, b: bytes) -> int:
    """How many bytes two prompts share from their start."""
    return next((index for index, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def rendered_prompt(body: dict[str, Any]) -> bytes:
    """A chat or Messages body as a template renders it: system texts, tools, then the turns."""
    system = body.get("system") or []
    texts = [block["text"] for block in system] if isinstance(system, list) else [system]
    messages = body.get("messages") or []
    leading = next((i for i, message in enumerate(messages) if message["role"] != "system"), len(messages))
    texts += [str(message["content"]) for message in messages[:leading]]
    texts += [json.dumps(tool) for tool in body.get("tools") or []]
    texts += [json.dumps(message) for message in messages[leading:]]
    return "\n".join(texts).encode()


# --- what the servers say to a prompt longer than their window ----------------------------------

#: vLLM 0.32 on chat and Responses, recorded on this machine.
VLLM_OVERFLOW: dict[str, Any] = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your prompt contains at least"
        " 8193 input tokens, and the model cannot generate any further tokens.",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
}
#: vLLM 0.32 on /v1/messages: the same words in Anthropic's envelope.
VLLM_MESSAGES_OVERFLOW: dict[str, Any] = {
    "type": "error",
    "error": {"type": "BadRequestError", "message": VLLM_OVERFLOW["error"]["message"]},
}
#: llama-server on every API, /v1/messages too (its error is OpenAI-shaped there as well).
LLAMA_OVERFLOW: dict[str, Any] = {
    "error": {
        "code": 400,
        "message": "request (231131 tokens) exceeds the available context size (16384 tokens), try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 231131,
        "n_ctx": 16384,
    }
}
#: SGLang (its `ErrorResponse` is not wrapped in "error"); the words from its source.
SGLANG_OVERFLOW: dict[str, Any] = {
    "object": "error",
    "message": "Requested token count exceeds the model's maximum context length of 8192 tokens. You requested a"
    " total of 9000 tokens: 8000 tokens from the input messages and 1000 tokens for the completion. Please reduce"
    " the number of tokens in the input messages or the completion to fit within the limit.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}


def refuses_as_too_long(chat: dict[str, Any], messages: dict[str, Any] | None = None) -> Behaviour:
    """An upstream whose window the conversation outgrew: 400 with the server's body (`messages` on
    /v1/messages, where it differs), except to the proxy's warm-ups, whose usage counts a token
    per 4 bytes as they measure the injected context."""

    async def refuse(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
        raw = await request.read()
        if is_warmup(json.loads(raw)):
            prompt = counted(raw)
            usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
            return web.json_response({**completion(), "usage": usage})
        body = messages if messages is not None and request.path == "/v1/messages" else chat
        return web.json_response(body, status=400)

    return refuse


# --- configuration and requests ----------------------------------------------------------------


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
    """A config for the repository and upstream. Usage is reported as the upstream counted it
    unless a test asks for `usage = client` (the default), whose first request waits for a
    measuring warm-up, and the layout is the separate one unless a test asks for `auto` (the
    default), whose first request waits for the template probes: tests that count upstream
    requests need not count those."""
    merged: dict[str, dict[str, str]] = {
        "repository": {"path": str(repo.path)},
        "upstream": {"url": upstream_url, "connect_timeout": "2s", "first_byte_timeout": "10s", "idle_timeout": "10s"},
        "context": {"state_dir": str(tmp_path / "state"), "usage": "upstream", "layout": "separate"},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return load_config(write_config(tmp_path, merged))


ProxyFactory = Callable[..., Awaitable[TestClient]]


def is_warmup(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or [{}]
    return body.get("max_tokens") == 1 and messages[-1].get("content") == "Reply with OK."


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "scout", "messages": list(messages) or [{"role": "user", "content": "Where is main?"}], **fields}


QUESTIONS = itertools.count(1)


async def injected(client: TestClient, upstream: FakeUpstream) -> tuple[str, str]:
    """Ask a question never asked before (a new conversation); the snapshot and the working diff
    the upstream received for it."""
    question = {"role": "user", "content": f"Where is main? (question {next(QUESTIONS)})"}
    response = await client.post("/v1/chat/completions", json=chat(question))
    assert response.status == 200, await response.text()
    messages = [seen.json for seen in upstream.seen if not is_warmup(seen.json)][-1]["messages"]
    return messages[0]["content"], messages[1]["content"]


# --- waiting -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def until_async(probe: Callable[[], Awaitable[object]], expected: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await probe()) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"got {value}, expected {expected}")
        await asyncio.sleep(0.05)


async def snapshot_ready(client: TestClient) -> None:
    for _ in range(200):
        health = await (await client.get("/health")).json()
        if health["snapshot"]["state"] == "ready":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"snapshot not ready: {health}")


# --- the real process --------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scout_diff_cache", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


class ProxyProcess:
    """`python -m scout_diff_cache serve --config CONFIG` as a child process, its output in `log`.

    `async with` starts it, waits (bounded) until `/health` says the snapshot is ready, and always
    stops it: SIGTERM, then SIGKILL if it has not exited in time. `start(wait=False)` and `ready()`
    are there for tests that watch readiness some other way (the systemd notify socket). The port
    is the config's `[server] port` unless given (an inherited socket). `env` is added to this
    process's environment; `wrapper` runs before the interpreter; other keywords go to Popen.
    """

    def __init__(
        self,
        config: Path,
        log: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
        ready_timeout: float = 30.0,
        **popen: Any,
    ) -> None:
        self.config, self.log = config, log
        self.port = port if port is not None else configured_port(config)
        self.env, self.wrapper, self.ready_timeout, self.popen = dict(env or {}), tuple(wrapper), ready_timeout, popen
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else "(no log)"

    async def start(self, *, wait: bool = True) -> ProxyProcess:
        assert self.process is None, "already started"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "scout_diff_cache", "serve", "--config", str(self.config)],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                **self.popen,
            )
        if wait:
            try:
                await self.ready()
            except BaseException:
                self.kill()
                raise
        return self

    async def ready(self, timeout: float | None = None) -> None:
        """Until `/health` answers with the snapshot ready; fails if the process exits or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.ready_timeout if timeout is None else timeout)
        last: object = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while loop.time() < deadline:
                if not self.running:
                    raise AssertionError(
                        f"the proxy exited ({self.returncode}) before it was ready:\n{self.log_tail()}"
                    )
                try:
                    async with session.get(f"{self.url}/health") as response:
                        last = response.status
                        if response.status == 200 and (await response.json())["snapshot"]["state"] == "ready":
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    last = error
                await asyncio.sleep(0.05)
        raise AssertionError(f"the proxy was not ready in time (last: {last!r}):\n{self.log_tail()}")

    def send_signal(self, signum: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        """The exit status; TimeoutError (the process left running) if it has not exited in time."""
        assert self.process is not None, "not started"
        deadline = asyncio.get_running_loop().time() + timeout
        while (code := self.process.poll()) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the proxy has not exited after {timeout}s")
            await asyncio.sleep(0.05)
        return code

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (unless it already exited) and its exit status; SIGKILL and a failure if it hangs."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.kill()
            raise AssertionError(f"the proxy did not stop within {timeout}s of SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    async def __aenter__(self) -> ProxyProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.running:
            await self.stop()


def configured_port(config: Path) -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    return parser.getint("server", "port")


def five_files(repo: GitRepo) -> None:
    for name in "abcde":
        repo.write(f"{name}.txt", f"file {name}\n" * 20)
    repo.commit("five files")


async def five_files_manual(make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo) -> TestClient:
    """A proxy in manual mode whose first epoch holds five small files."""
    five_files(git_repo)
    client = await make_proxy(context={"rebase": "manual"})
    await injected(client, upstream)
    return client
