"""`[upstream] prompt = tokens`: the snapshot as token ids on llama.cpp's `/completion`, checked
against a recording llama.cpp-like upstream (a toy template and tokenizer), and the pure parts."""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from scout_diff_cache.app import make_app
from scout_diff_cache.upstream.id_routes import MARKER, parity, split_at_marker, split_ids
from scout_diff_cache.upstream.llama_completion import ChatFromCompletion, completion_body, text_reason
from scout_diff_cache.upstream.prompt_ids import encoded_ids
from scout_diff_cache.upstream.tail_ids import longest_prefix, special_candidates, stable_cut
from scout_diff_cache.upstream.tokenizer import packed_ids

from support import GitRepo, proxy_config

BOS, TURN, EOT = 1, 1000, 1001
SPECIAL = {"<turn>": TURN, "<eot>": EOT}


#: Past the 32 MiB any other answer may have, as a 10M-token snapshot's ids are.
PADDING = 32 * 1024 * 1024


class FakeLlama:
    """llama.cpp's routes as far as the token path uses them: `/props`, `/apply-template` (a
    ChatML-like template whose turn markers are special tokens), `/tokenize` (a token a character,
    `merged` text, if set, one token; with its pieces if asked), `/completion` and
    `/v1/chat/completions`; every request kept."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.merged: str | None = None
        self.llama = True
        #: Whether it says it is vLLM (its /v1/models), taking chat bodies at /tokenize.
        self.vllm = False
        #: Its base URL, /v1 included, once it serves.
        self.url = ""
        #: Blanks added inside the JSON of its answers to the token path's `/tokenize` of text longer
        #: than this many characters (a large snapshot's answer, without the large snapshot).
        self.padded_over: int | None = None
        #: The context its one slot has.
        self.window = 32768

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # a large snapshot's ids
        app.router.add_get("/props", self.props)
        app.router.add_post("/apply-template", self.apply_template)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/completion", self.completion)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        return app

    def asked(self, path: str) -> list[Any]:
        return [body for seen, body in self.seen if seen == path]

    def tokenised(self) -> list[Any]:
        """What the token-id path asked `/tokenize` (text with its special tokens, or a chat body),
        not the proxy's counting of file contents."""
        return [body for body in self.asked("/tokenize") if "parse_special" in body or "model" in body]

    async def props(self, request: web.Request) -> web.Response:
        if not self.llama:
            raise web.HTTPNotFound()
        return web.json_response({"default_generation_settings": {"n_ctx": self.window}})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m", "owned_by": "vllm" if self.vllm else "someone"}]})

    @staticmethod
    def render(body: dict[str, Any]) -> str:
        return "".join(f"<turn>{m['role']}\n{m['content']}<eot>\n" for m in body["messages"]) + "<turn>assistant\n"

    async def apply_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(("/apply-template", body))
        return web.json_response({"prompt": self.render(body)})

    def pieces(self, text: str, add_special: bool, parse_special: bool = True) -> list[tuple[int, str]]:
        out = [(BOS, "<bos>")] if add_special else []
        whole = (self.merged, *SPECIAL) if parse_special else (self.merged,)
        position = 0
        while position < len(text):
            special = next((s for s in whole if s and text.startswith(s, position)), None)
            if special is not None:
                out.append((SPECIAL.get(special, 7), special))
                position += len(special)
            else:
                out.append((2000 + ord(text[position]), text[position]))
                position += 1
        return out

    def ids(self, text: str, add_special: bool) -> list[int]:
        return [token for token, _ in self.pieces(text, add_special)]

    def text(self, ids: list[int]) -> str:
        """The text of ids this tokenizer made (<bos> left out)."""
        names = {TURN: "<turn>", EOT: "<eot>", BOS: "", 7: self.merged or ""}
        return "".join(names[token] if token in names else chr(token - 2000) for token in ids)

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(("/tokenize", body))
        if "messages" in body:  # vLLM: a chat body, rendered and tokenised at once
            return web.json_response({"tokens": self.ids(self.render(body), True)})
        text = body["content"] if "content" in body else body["prompt"]
        found = self.pieces(text, body.get("add_special", False), body.get("parse_special", True))
        if body.get("with_pieces"):
            return web.json_response({"tokens": [{"id": token, "piece": piece} for token, piece in found]})
        answer = json.dumps({"tokens": [token for token, _ in found]}).encode()
        if self.padded_over is not None and "parse_special" in body and len(text) > self.padded_over:
            answer = answer[:-1] + b" " * PADDING + b"}"
        return web.Response(body=answer, content_type="application/json")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(("/completion", body))
        final = {
            "content": "" if body["stream"] else "fine",
            "stop": True,
            "stop_type": "limit",
            "tokens_evaluated": 120,
            "tokens_predicted": 2,
            "timings": {"cache_n": 100, "prompt_n": 20, "predicted_n": 2},
        }
        if not body["stream"]:
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("fi", "ne"):
            await response.write(b"data: " + json.dumps({"content": word, "stop": False}).encode() + b"\n\n")
        await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await response.write_eof()
        return response

    async def chat(self, request: web.Request) -> web.Response:
        self.seen.append(("/v1/chat/completions", await request.json()))
        usage = {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}
        message = {"role": "assistant", "content": "by text"}
        return web.json_response(
            {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
        )


@pytest.fixture
async def llama(aiohttp_server: Any) -> FakeLlama:
    fake = FakeLlama()
    fake.url = str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/v1"))
    return fake


async def proxy(
    tmp_path: Path, repo: GitRepo, llama: FakeLlama, aiohttp_client: Any, prompt: str, conversations: str = "off"
) -> TestClient:
    context = {"conversations": conversations}
    config = proxy_config(tmp_path, repo, llama.url, upstream={"prompt": prompt}, context=context)
    return await aiohttp_client(make_app(config))


def question(text: str = "Where is main?", **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 5, **fields}


async def test_a_chat_question_goes_as_the_snapshots_ids_and_its_tail_as_text(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    response = await client.post("/v1/chat/completions", json=question(temperature=0, stop="END"))
    assert response.status == 200, await response.text()
    assert response.headers["X-Scout-Prompt"] == "tokens"
    answer = await response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "m"
    assert answer["choices"] == [
        {"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": "fine"}}
    ]
    assert answer["usage"] == {
        "completion_tokens": 2,
        "prompt_tokens": 120,
        "total_tokens": 122,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    [sent] = llama.asked("/completion")
    *ids, rest = sent["prompt"]
    prompt = llama.text(ids) + rest
    assert ids[:2] == [BOS, TURN] and prompt.startswith("<turn>system\n# Repository snapshot")
    assert "def add(a, b)" in prompt and "<eot>\n<turn>system\n# Working diff" in prompt
    assert prompt.endswith("Where is main?<eot>\n<turn>assistant\n")
    assert rest == "assistant\n"  # the text after the last special token: the rest went as ids
    assert [*ids, *llama.ids(rest, False)] == llama.ids(prompt, True)  # the server's tokens of it all
    assert sent["n_predict"] == 5 and sent["temperature"] == 0 and sent["stop"] == ["END"]
    assert sent["cache_prompt"] is True and "prompt" not in sent["response_fields"]
    assert not llama.asked("/v1/chat/completions")


async def test_the_snapshot_is_tokenised_once_per_epoch(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    for text in ("One?", "Two?", "Three?"):
        assert (await client.post("/v1/chat/completions", json=question(text))).status == 200
    # the snapshot's ids and the whole prompt's, once; then one render a request
    assert len([body for body in llama.tokenised() if "def add(a, b)" in body["content"]]) == 2
    assert len(llama.asked("/apply-template")) == 4
    assert len(llama.asked("/completion")) == 3
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_requests_total{path="tokens",reason="ok"} 3' in metrics
    assert 'scout_prompt_checks_total{outcome="match"} 1' in metrics


async def test_a_streamed_answer_comes_back_in_chat_chunks(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    response = await client.post("/v1/chat/completions", json=question(stream=True))
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    events = (await response.read()).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(event[6:]) for event in events[:-2]]
    assert [chunk["choices"][0]["delta"] for chunk in chunks] == [
        {"role": "assistant", "content": None},
        {"content": "fi"},
        {"content": "ne"},
        {},
    ]  # no usage chunk: the client did not ask for it
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len({chunk["id"] for chunk in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"
    response = await client.post(
        "/v1/chat/completions", json=question(stream=True, stream_options={"include_usage": True})
    )
    usage = json.loads((await response.read()).split(b"\n\n")[-3][6:])
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens_details"] == {"cached_tokens": 100}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (question(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (question(response_format={"type": "json_object"}), "unmapped field"),
    ],
)
async def test_a_request_that_needs_the_chat_endpoint_goes_by_text(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any, body: dict[str, Any], reason: str
) -> None:
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["X-Scout-Prompt"] == "text"
    assert (await response.json())["choices"][0]["message"]["content"] == "by text"
    assert not llama.asked("/completion") and not llama.tokenised()
    metrics = await (await client.get("/metrics")).text()
    assert f'scout_prompt_requests_total{{path="text",reason="{reason}"}} 1' in metrics


async def test_ids_that_differ_from_the_whole_prompts_send_the_epoch_by_text(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    llama.merged = "===\n<eot>"  # a tokenizer that merges across the cut
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    for text in ("One?", "Two?"):
        response = await client.post("/v1/chat/completions", json=question(text))
        assert response.headers["X-Scout-Prompt"] == "text"
    assert not llama.asked("/completion") and len(llama.asked("/v1/chat/completions")) == 2
    assert len(llama.tokenised()) == 3  # checked once for the epoch
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_checks_total{outcome="mismatch"} 1' in metrics
    assert 'scout_prompt_requests_total{path="text",reason="parity"} 2' in metrics


async def test_a_server_that_is_not_llama_cpp_gets_text(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    llama.llama = False
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "auto")
    assert (await client.post("/v1/chat/completions", json=question())).headers["X-Scout-Prompt"] == "text"
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_requests_total{path="text",reason="server"} 1' in metrics


async def test_prompt_text_asks_nothing_of_the_tokenizer(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "text")
    assert (await client.post("/v1/chat/completions", json=question())).headers["X-Scout-Prompt"] == "text"
    assert not llama.tokenised() and not llama.asked("/apply-template") and not llama.asked("/completion")
    assert "scout_prompt_requests_total{" not in await (await client.get("/metrics")).text()


def test_what_completion_cannot_serve_is_named() -> None:
    assert text_reason({"model": "m", "temperature": 0, "max_tokens": 3, "stream": True, "n": 1}) is None
    assert text_reason({"tools": [{}]}) == "tools"
    assert text_reason({"tools": [], "logprobs": True}) == "unmapped field"
    assert text_reason({"n": 2}) == "unmapped field"


def test_the_marker_must_render_exactly_once() -> None:
    assert split_at_marker(f"head{MARKER}tail") == ("head", "tail")
    assert split_at_marker("no marker") is None
    assert split_at_marker(f"a{MARKER}b{MARKER}c") is None


def test_encoded_ids_splice_into_the_json_of_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scout_diff_cache.upstream.prompt_ids.CHUNK_BYTES", 16)  # two ids a chunk
    ids = array("i", [2, 105, 7, 99999, 3])
    chunks = encoded_ids(ids)
    assert len(chunks) == 3 and json.loads(b"[" + b"".join(chunks) + b"]") == list(ids)
    body = completion_body(chunks, "tail", {"max_completion_tokens": 4, "seed": 1, "tools": []})
    sent = json.loads(b"".join(body.chunks))
    assert sent["prompt"] == [2, 105, 7, 99999, 3, "tail"]
    assert (sent["n_predict"], sent["seed"], "tools" in sent) == (4, 1, False)


def test_parity_is_every_token_in_order() -> None:
    assert parity([1, 2, 3, 4], array("i", [1, 2]), array("i", [3, 4]))
    assert not parity([1, 2, 34], array("i", [1, 2, 3]), array("i", [4]))
    assert not parity([3], array("i"), array("i", [3]))


def test_a_stream_split_anywhere_translates_the_same() -> None:
    events = b'data: {"content":"a","stop":false}\n\ndata: {"content":"","stop":true,"stop_type":"eos","tokens_evaluated":9}\n\n'
    whole = ChatFromCompletion("m")
    expected = whole.feed(events) + whole.flush()
    split = ChatFromCompletion("m")
    split.id, split.created = whole.id, whole.created
    pieces = [split.feed(events[i : i + 7]) for i in range(0, len(events), 7)]
    assert b"".join(pieces) + split.flush() == expected
    assert expected.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in expected


def test_the_marker_ids_must_occur_exactly_once_and_whole() -> None:
    tokens, marker = array("i", [2, 105, 7, 8, 9, 106]), array("i", [7, 8])
    assert split_ids(tokens, marker) == (array("i", [2, 105]), array("i", [9, 106]))
    assert split_ids(array("i", [7, 8, 1, 7, 8]), marker) is None
    assert split_ids(array("i", [7, 9]), marker) is None
    assert split_ids(array("i", [256 * 7, 0]), array("i", [7])) is None  # bytes of it, not an id


async def test_vllm_gets_every_id_in_kv_transfer_params_and_serves_tools(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    llama.llama, llama.vllm = False, True
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    tools = [{"type": "function", "function": {"name": "f"}}]
    for text in ("One?", "Two?"):
        response = await client.post("/v1/chat/completions", json=question(text, tools=tools))
        assert response.headers["X-Scout-Prompt"] == "tokens"
        assert (await response.json())["choices"][0]["message"]["content"] == "by text"  # vLLM's own chat answer
    sent = llama.asked("/v1/chat/completions")[-1]
    real = [
        body for body in llama.tokenised() if "messages" in body and MARKER not in json.dumps(body, ensure_ascii=False)
    ]
    [whole] = real  # the whole prompt tokenised once, for the epoch
    rendered = llama.render({"messages": [*whole["messages"][:-1], {"role": "user", "content": "Two?"}]})
    assert sent["kv_transfer_params"] == {"prompt_token_ids": llama.ids(rendered, True)}
    assert MARKER in sent["messages"][0]["content"] and sent["tools"] == tools  # small messages, for its parsers
    assert not llama.asked("/completion") and not llama.asked("/apply-template")


async def test_a_conversations_history_is_tokenised_once_and_its_ids_grow_by_its_new_turns(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens", conversations="on")
    history: list[dict[str, str]] = []
    for turn in range(4):
        history.append({"role": "user", "content": f"Question {turn}?"})
        before = len(llama.tokenised())
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": history, "max_tokens": 5})
        assert response.status == 200 and response.headers["X-Scout-Prompt"] == "tokens"
        history.append({"role": "assistant", "content": (await response.json())["choices"][0]["message"]["content"]})
        *ids, rest = llama.asked("/completion")[-1]["prompt"]
        prompt = llama.text(ids) + rest
        assert rest == "assistant\n"  # only the text after the last special token goes as text
        assert [*ids, *llama.ids(rest, False)] == llama.ids(prompt, True)  # the server's tokens of it all
        assert all(f"Question {earlier}?<eot>" in prompt for earlier in range(turn + 1))
        if turn:  # only the new text was tokenised: the last answer, the edit, the new question
            [new] = llama.tokenised()[before:]
            assert new["content"].startswith("assistant\nfine<eot>\n<turn>system\n# Work tree changes")
            assert new["content"].endswith(f"<turn>user\nQuestion {turn}?<eot>\n<turn>")
            assert f"Question {turn - 1}?" not in new["content"]
        git_repo.write("src/app.py", f"def main():\n    return {turn}\n")  # an edit between turns
    assert "return 2" in prompt  # the edits reached the model
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_checks_total{outcome="conversation match"} 1' in metrics


async def test_grown_ids_that_differ_from_the_tails_send_the_epochs_tails_by_text(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    llama.merged = "<turn>assistant"  # a tokenizer that merges across the special token the cut follows
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    for text in ("One?", "Two?"):
        before = len(llama.tokenised())
        response = await client.post("/v1/chat/completions", json=question(text))
        assert response.status == 200 and response.headers["X-Scout-Prompt"] == "tokens"
        *ids, rest = llama.asked("/completion")[-1]["prompt"]
        assert rest.startswith("<eot>\n<turn>system\n# Working diff") and rest.endswith(
            f"{text}<eot>\n<turn>assistant\n"
        )
        assert [*ids, *llama.ids(rest, False)] == llama.ids(llama.text(ids) + rest, True)
    assert len(llama.tokenised()) == before  # the second request asked nothing of the tokenizer
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_checks_total{outcome="match"} 1' in metrics
    assert 'scout_prompt_checks_total{outcome="conversation mismatch"} 1' in metrics


def test_the_stable_cut_is_the_end_of_the_last_special_token() -> None:
    specials = ("<turn>", "<eot>")
    assert stable_cut("a<eot>\n<turn>user\nhi<eot>\n<turn>model\n", specials) == len(
        "a<eot>\n<turn>user\nhi<eot>\n<turn>"
    )
    assert stable_cut("plain text", specials) == 0
    assert stable_cut("<turn>a<eot>b", specials, start=6) == len("<turn>a<eot>")
    assert stable_cut("<turn>abc", specials, start=6) == 6  # none after the start
    assert stable_cut("<turn>", (), 0) == 0


def test_the_longest_kept_prefix_is_the_one_grown() -> None:
    kept = ["<eot>a<turn>", "<eot>a<turn>b<eot><turn>", "<eot>x<turn>"]
    assert longest_prefix(kept, "<eot>a<turn>b<eot><turn>c") == "<eot>a<turn>b<eot><turn>"
    assert longest_prefix(kept, "<eot>a<turn>b") == "<eot>a<turn>"
    assert longest_prefix(kept, "<eot>b") == ""


def test_special_tokens_are_those_only_parsing_them_makes() -> None:
    parsed = [(1000, "<turn>"), (2117, "u"), (1001, "<eot>"), (3001, "ser")]
    assert special_candidates(parsed, [2060, 2117, 2115, 2101, 2114]) == {"<turn>": 1000, "<eot>": 1001, "ser": 3001}


async def test_a_conversation_keeps_one_tail_and_the_least_recently_used_is_let_go(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scout_diff_cache.upstream.tail_ids.KEPT_TAILS", 2)
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens", conversations="on")
    histories: dict[str, list[dict[str, str]]] = {"A": [], "B": [], "C": []}

    async def tokenised_for(name: str) -> str:
        """One more turn of conversation `name`: the text tokenised for its tail."""
        history = histories[name]
        history.append({"role": "user", "content": f"{name} question {len(history) // 2}?"})
        before = len(llama.tokenised())
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": history})
        history.append({"role": "assistant", "content": (await response.json())["choices"][0]["message"]["content"]})
        return "".join(body["content"] for body in llama.tokenised()[before:])

    await tokenised_for("B")
    for _ in range(3):
        await tokenised_for("A")
    assert "B question 0?" not in await tokenised_for("B")  # A's turns took one place, not three
    await tokenised_for("C")  # a third conversation: A's, the least recently used, is let go
    assert "A question 0?" in await tokenised_for("A")


async def test_a_snapshots_ids_are_read_however_large_their_answer(
    tmp_path: Path, git_repo: GitRepo, llama: FakeLlama, aiohttp_client: Any
) -> None:
    """Ids take at most 8 bytes of JSON a byte of text: an answer that large is read (off the loop),
    not refused as any other answer over 32 MiB is."""
    git_repo.write("src/big.py", "".join(f"value_{n} = {n}\n" for n in range(12_000)))  # ~190 KB
    git_repo.commit("a large file")
    llama.padded_over, llama.window = 150_000, 1_000_000
    client = await proxy(tmp_path, git_repo, llama, aiohttp_client, "tokens")
    response = await client.post("/v1/chat/completions", json=question())
    assert response.status == 200, await response.text()
    assert response.headers["X-Scout-Prompt"] == "tokens"
    [sent] = llama.asked("/completion")
    *ids, _ = sent["prompt"]
    assert "value_11999 = 11999\n" in llama.text(ids)


@pytest.mark.parametrize(
    "answer",
    [
        b'{"tokens":[2,105,9259,0,-1]}',
        b'{"count":3,"max_model_len":8192,"tokens":[1,2,3],"token_strs":null}',
        b'{"tokens":[]}',
    ],
)
def test_compact_ids_are_packed_as_json_would_read_them(answer: bytes) -> None:
    packed = packed_ids(answer)
    assert packed is not None and list(packed) == json.loads(answer)["tokens"]


@pytest.mark.parametrize(
    "answer",
    [
        b'{"tokens":[{"id":2,"piece":"<bos>"}]}',  # with its pieces: parsed as JSON
        b'{"tokens":[1.5]}',
        b'{"tokens":[99999999999]}',  # past what an id can be
        b'{"count":0}',
        b'{"tokens":[1,2',
        b'{"tokens": [7, 8]}',  # not compact
    ],
)
def test_any_other_answer_is_left_to_json(answer: bytes) -> None:
    assert packed_ids(answer) is None


def test_ids_read_a_slice_at_a_time_are_every_id_in_order() -> None:
    ids = [(n * 7919) % 262144 for n in range(5000)]
    answer = json.dumps({"tokens": ids}, separators=(",", ":")).encode()
    for step in (8, 9, 64, 1000, len(answer)):  # a slice longer than an id (7 bytes with its comma)
        packed = packed_ids(answer, step)
        assert packed is not None and list(packed) == ids, step
