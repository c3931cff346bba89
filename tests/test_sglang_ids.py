"""`[upstream] prompt = tokens` on SGLang: `/v1/chat/completions` with `input_ids`, checked against a
recording SGLang-like upstream that takes and refuses what SGLang's request models do (its
`ChatCompletionRequest` and `TokenizeRequest`), with a toy template and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from scout_diff_cache.app import make_app
from scout_diff_cache.upstream.id_routes import MARKER, VllmChat
from scout_diff_cache.upstream.prompt_ids import route_for
from scout_diff_cache.upstream.sglang_ids import SglangChat

from support import GitRepo, proxy_config

BOS, START, END, MERGED = 1, 1000, 1001, 7
SPECIAL = {"<s>": BOS, "<|im_start|>": START, "<|im_end|>": END}
ROLES = {"system", "assistant", "tool", "function", "developer", "latest_reminder", "user"}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


class BadRequest(Exception):
    """What SGLang answers 400 for: a body its request models do not validate."""


class FakeSglang:
    """SGLang's routes as far as the token path uses them: `/v1/models` (owned by sglang),
    `/model_info`, `/tokenize` (a prompt, or a chat body rendered by chat's own code, its other
    fields, `input_ids` included, taken as chat takes them) and `/v1/chat/completions` (`input_ids`
    as the prompt, the messages otherwise; tool calls parsed out of the answer). No `/props`.
    Every request is kept; the prompt each chat request would run on too."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        #: The ids each chat request was run on.
        self.prompts: list[list[int]] = []
        #: Text the tokenizer takes as one token, across what would otherwise be two.
        self.merged: str | None = None
        #: False: an SGLang from before `input_ids`, which ignores them as any unknown field.
        self.takes_ids = True
        self.owner = "sglang"
        self.reads_images = False
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.bad_requests])
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/model_info", self.model_info)
        for path in ("/tokenize", "/v1/tokenize"):
            app.router.add_post(path, self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    @web.middleware
    async def bad_requests(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as error:
            body = {"object": "error", "message": str(error), "type": "BadRequestError", "param": None, "code": 400}
            return web.json_response(body, status=400)

    def asked(self, path: str) -> list[Any]:
        return [body for seen, body in self.seen if seen == path]

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": "m", "object": "model", "created": 1, "owned_by": self.owner, "root": "m", "parent": None}
        return web.json_response({"object": "list", "data": [{**card, "max_model_len": 4096}]})

    async def model_info(self, request: web.Request) -> web.Response:
        self.seen.append(("/model_info", None))
        media = {"has_image_understanding": self.reads_images, "has_audio_understanding": False}
        return web.json_response({"model_path": "m", "is_generation": True, "model_type": "toy", **media})

    def ids(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = [BOS] if add_special_tokens else []
        position = 0
        while position < len(text):
            special = next((s for s in (*SPECIAL, self.merged or "\0") if text.startswith(s, position)), None)
            if special is not None:
                out.append(SPECIAL.get(special, MERGED))
                position += len(special)
            else:
                out.append(2000 + ord(text[position]))
                position += 1
        return out

    @staticmethod
    def render(body: dict[str, Any]) -> str:
        """A ChatML template that, like Qwen's, lists the tools at the end of the first system turn."""
        tools = body.get("tools") and body.get("tool_choice") != "none"
        out = "<s>"
        for index, message in enumerate(body["messages"]):
            content = message.get("content") or ""
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            listed = "\n# Tools\n" + json.dumps(body["tools"]) if tools and index == 0 else ""
            out += f"<|im_start|>{message['role']}\n{content}{listed}<|im_end|>\n"
        return out + "<|im_start|>assistant\n"

    def prompt_of(self, body: dict[str, Any]) -> list[int]:
        """What chat's `_process_messages` makes of a chat body: its `input_ids` as they are, or the
        template rendered and encoded without adding specials (the template has them)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("messages: Input should be a valid list")
        if not messages:
            raise BadRequest("Messages cannot be empty.")
        if any(m.get("role") not in ROLES for m in messages):
            raise BadRequest("'role' must be one of the chat roles")
        tools = body.get("tools")
        if tools is not None and not all(isinstance(t, dict) and "name" in t.get("function", {}) for t in tools):
            raise BadRequest("tools: a function needs a name")
        ids = body.get("input_ids")
        if ids is not None and self.takes_ids:
            if not isinstance(ids, list) or not all(type(token) is int for token in ids):
                raise BadRequest("input_ids: Input should be a valid list of integers")
            return ids
        return self.ids(self.render(body))

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(("/tokenize", body))
        if ("prompt" in body) == ("messages" in body):
            raise BadRequest("Exactly one of 'prompt' or 'messages' must be provided.")
        if "messages" in body:
            tokens = self.prompt_of({k: v for k, v in body.items() if k != "add_special_tokens"})
        elif isinstance(body["prompt"], str):
            tokens = self.ids(body["prompt"], body.get("add_special_tokens", True))
        else:
            raise BadRequest("Invalid prompt type. Expected str or List[str].")
        return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": 4096})

    async def detokenize(self, request: web.Request) -> web.Response:
        """SGLang's `/detokenize`: the text of ids, as `text`."""
        body = await request.json()
        self.seen.append(("/detokenize", body))
        names = {token: text for text, token in (*SPECIAL.items(), (self.merged or "", MERGED))}
        return web.json_response({"text": "".join(names.get(token) or chr(token - 2000) for token in body["tokens"])})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(("/v1/chat/completions", body))
        prompt = self.prompt_of(body)
        self.prompts.append(prompt)
        message: dict[str, Any] = {"role": "assistant", "content": "fine", "reasoning_content": None}
        finish = "stop"
        if body.get("tools") and body.get("tool_choice") != "none":  # its tool-call parser at work
            call = {"id": "call_1", "index": 0, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            message, finish = {**message, "content": "", "tool_calls": [call]}, "tool_calls"
        usage = {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1}
        if body.get("stream"):
            return await self.stream(request, body, usage)
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish, "matched_stop": None}
        answer = {"id": "x", "object": "chat.completion", "created": 1, "model": body.get("model", "default")}
        return web.json_response({**answer, "choices": [choice], "usage": usage})

    async def stream(self, request: web.Request, body: dict[str, Any], usage: dict[str, Any]) -> web.StreamResponse:
        """Its chunks: the role, the text, the finish, the usage if asked for, then `[DONE]`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": body.get("model", "default")}
        deltas: tuple[dict[str, str], ...] = ({"role": "assistant", "content": ""}, {"content": "fine"}, {})
        events = [{**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
        events[-1]["choices"][0]["finish_reason"] = "stop"
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        for event in events:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def sglang(aiohttp_server: Any) -> FakeSglang:
    fake = FakeSglang()
    fake.url = str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/v1"))
    return fake


async def proxy(tmp_path: Path, repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any, prompt: str) -> TestClient:
    tmp_path.mkdir(exist_ok=True)
    config = proxy_config(tmp_path, repo, sglang.url, upstream={"prompt": prompt}, context={"conversations": "off"})
    return await aiohttp_client(make_app(config))


def question(text: str = "Where is main?", **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 5, **fields}


def text_of(ids: list[int]) -> str:
    return "".join(chr(token - 2000) if token >= 2000 else f"[{token}]" for token in ids)


async def metrics(client: TestClient) -> str:
    return await (await client.get("/metrics")).text()


async def test_sglang_runs_on_the_same_ids_as_for_the_text_prompt(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    by_text = await proxy(tmp_path / "text", git_repo, sglang, aiohttp_client, "text")
    assert (await by_text.post("/v1/chat/completions", json=question())).headers["X-Scout-Prompt"] == "text"
    [text_body] = sglang.asked("/v1/chat/completions")
    by_ids = await proxy(tmp_path / "ids", git_repo, sglang, aiohttp_client, "tokens")
    response = await by_ids.post("/v1/chat/completions", json=question())
    assert response.status == 200, await response.text()
    assert response.headers["X-Scout-Prompt"] == "tokens"
    assert (await response.json())["choices"][0]["message"]["content"] == "fine"  # SGLang's own chat answer
    sent = sglang.asked("/v1/chat/completions")[-1]
    assert "input_ids" not in text_body and "kv_transfer_params" not in sent
    assert sent["input_ids"] == sglang.ids(sglang.render(text_body)) == sglang.prompts[-1]
    assert MARKER in sent["messages"][0]["content"] and "Repository snapshot" not in json.dumps(sent)
    assert text_of(sent["input_ids"]).count("def add(a, b):\n    return a + b") == 1  # the snapshot, once
    assert text_of(sent["input_ids"]).endswith("Where is main?[1001]\n[1000]assistant\n")
    assert 'scout_prompt_requests_total{path="tokens",reason="ok"} 1' in await metrics(by_ids)


async def test_the_ids_are_the_snapshots_then_the_tail_of_each_request(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    for text in ("One?", "Two?", "Three?"):
        assert (await client.post("/v1/chat/completions", json=question(text))).headers["X-Scout-Prompt"] == "tokens"
    first, *_, last = [body["input_ids"] for body in sglang.asked("/v1/chat/completions")]
    snapshot = first.index(END)  # the cut: right after the snapshot's last line
    assert first[:snapshot] == last[:snapshot] and first[:2] == [BOS, START]  # the epoch's ids, shared
    assert text_of(last[snapshot:]).startswith("[1001]\n[1000]system\n# Working diff")
    whole = [body for body in sglang.asked("/tokenize") if "messages" in body and "input_ids" not in body]
    real = [body for body in whole if MARKER not in json.dumps(body, ensure_ascii=False)]
    assert len(real) == 1 and len(whole) == 4  # the whole prompt tokenised once; each request's own split
    probes = [body for body in sglang.asked("/tokenize") if "input_ids" in body]
    assert len(probes) == 1 and len(sglang.asked("/model_info")) == 1  # the server checked once
    assert 'scout_prompt_checks_total{outcome="match"} 1' in await metrics(client)


async def test_tools_go_as_ids_and_sglang_still_parses_the_call(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    for text in ("One?", "Two?"):
        response = await client.post("/v1/chat/completions", json=question(text, tools=TOOLS))
        assert response.headers["X-Scout-Prompt"] == "tokens"
        [choice] = (await response.json())["choices"]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    sent = sglang.asked("/v1/chat/completions")[-1]
    assert sent["tools"] == TOOLS and "# Tools" in text_of(sent["input_ids"])  # rendered, after the snapshot
    assert sent["input_ids"] == sglang.ids(sglang.render({**sent, "messages": real_messages(sglang, "Two?")}))


async def test_a_conversations_history_is_not_tokenised_again(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    history: list[dict[str, str]] = []
    for turn in range(4):
        history.append({"role": "user", "content": f"Question {turn}: " + "y" * 300})
        before = len(sglang.asked("/tokenize"))
        assert (await client.post("/v1/chat/completions", json=question(messages=history))).status == 200
        sent = sglang.asked("/v1/chat/completions")[-1]
        assert sent["input_ids"] == sglang.ids(sglang.render({**sent, "messages": real_messages(sglang, history)}))
        history.append({"role": "assistant", "content": f"Answer {turn}: " + "y" * 300})
    asked = json.dumps(sglang.asked("/tokenize")[before:])  # the last turn's, past the epoch's check
    assert "Question 3: " + "y" * 300 in asked and "Answer 2: " + "y" * 300 in asked  # its new messages
    assert all(f"Question {turn}: " + "y" * 300 not in asked for turn in range(3))
    assert 'scout_prompt_checks_total{outcome="conversation match"} 1' in await metrics(client)


def real_messages(sglang: FakeSglang, last: str | list[dict[str, str]]) -> list[dict[str, Any]]:
    """The messages of the request that learned the epoch's ids (one question), with its question
    replaced by another, or by a client's messages."""
    [whole] = [
        body
        for body in sglang.asked("/tokenize")
        if "messages" in body and "input_ids" not in body and MARKER not in json.dumps(body, ensure_ascii=False)
    ]
    return [*whole["messages"][:-1], *([{"role": "user", "content": last}] if isinstance(last, str) else last)]


async def test_a_streamed_answer_comes_as_sglang_streams_it(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    response = await client.post("/v1/chat/completions", json=question(stream=True))
    assert response.headers["X-Scout-Prompt"] == "tokens"
    events = (await response.read()).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    deltas = [json.loads(event[6:])["choices"][0]["delta"] for event in events[:-2]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "fine"}, {}]  # no usage: not asked for
    sent = sglang.asked("/v1/chat/completions")[-1]
    assert sent["stream"] is True and sent["input_ids"] == sglang.prompts[-1]


async def test_ids_that_differ_from_the_whole_prompts_send_the_epoch_by_text(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    sglang.merged = "===\n<|im_end|>"  # a tokenizer that merges across the cut
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    for text in ("One?", "Two?"):
        assert (await client.post("/v1/chat/completions", json=question(text))).headers["X-Scout-Prompt"] == "text"
    assert not any("input_ids" in body for body in sglang.asked("/v1/chat/completions"))
    found = await metrics(client)
    assert 'scout_prompt_checks_total{outcome="mismatch"} 1' in found
    assert 'scout_prompt_requests_total{path="text",reason="parity"} 2' in found


@pytest.mark.parametrize("server", ["before input_ids", "reads images"])
async def test_an_sglang_that_cannot_take_the_ids_gets_text_and_is_not_asked_again(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any, server: str
) -> None:
    sglang.takes_ids = server != "before input_ids"
    sglang.reads_images = server == "reads images"
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    for text in ("One?", "Two?"):
        response = await client.post("/v1/chat/completions", json=question(text))
        assert response.headers["X-Scout-Prompt"] == "text" and response.status == 200
    assert not any("input_ids" in body for body in sglang.asked("/v1/chat/completions"))
    assert len([body for body in sglang.asked("/tokenize") if "input_ids" in body]) == 1
    assert 'scout_prompt_requests_total{path="text",reason="server"} 2' in await metrics(client)


async def test_a_clients_own_input_ids_go_by_text(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "tokens")
    response = await client.post("/v1/chat/completions", json=question(input_ids=[5, 6]))
    assert response.headers["X-Scout-Prompt"] == "text"
    assert sglang.asked("/v1/chat/completions")[0]["input_ids"] == [5, 6] and not sglang.asked("/model_info")
    assert 'scout_prompt_requests_total{path="text",reason="unmapped field"} 1' in await metrics(client)


async def test_a_server_whose_models_are_not_sglangs_is_not_taken_for_it(
    tmp_path: Path, git_repo: GitRepo, sglang: FakeSglang, aiohttp_client: Any
) -> None:
    sglang.owner = "someone"
    client = await proxy(tmp_path, git_repo, sglang, aiohttp_client, "auto")
    assert (await client.post("/v1/chat/completions", json=question())).headers["X-Scout-Prompt"] == "text"
    assert not [body for body in sglang.asked("/tokenize") if "messages" in body] and not sglang.asked("/model_info")
    assert 'scout_prompt_requests_total{path="text",reason="server"} 1' in await metrics(client)


def test_the_route_is_told_by_who_owns_the_models() -> None:
    def owned(*owners: str) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "m", "owned_by": owner} for owner in owners]}

    assert type(route_for(None, owned("sglang"))) is SglangChat
    assert type(route_for(None, owned("vllm"))) is VllmChat
    assert route_for(None, owned("someone")) is None and route_for(None, None) is None
