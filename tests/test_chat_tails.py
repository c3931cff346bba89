"""A conversation's ids grown on a server that renders chat bodies only by tokenising them (vLLM,
SGLang): its history stood in for, never tokenised again, and the ids sent always the server's own
tokens of the whole prompt. Checked against a recording vLLM-like upstream (the toy template and
tokenizer of `test_prompt_ids.py`, with `/detokenize`), and the pure parts."""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from test_prompt_ids import FakeLlama

from scout_diff_cache.app import make_app
from scout_diff_cache.upstream.chat_tails import (
    EDGE,
    SHORT,
    after_marker,
    parting,
    prefix_keys,
    spliced,
    stand_in,
    stood_in,
)
from scout_diff_cache.upstream.id_routes import MARKER

from support import GitRepo, proxy_config

LONG = "y" * 400


class FakeVllm(FakeLlama):
    """vLLM's token routes: `/tokenize` (a chat body, or a prompt), `/detokenize`, and chat taking
    `kv_transfer_params.prompt_token_ids`. Its template can read contents it does not write
    (`counting`: the last question tells how many characters the questions before it had) or
    rewrite earlier turns when a new one comes (`forgetful`: questions before the last are shown as
    "(asked)")."""

    def __init__(self) -> None:
        super().__init__()
        self.llama, self.vllm = False, True
        self.counting = self.forgetful = False

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/detokenize", self.detokenize)
        return app

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(("/detokenize", body))
        return web.json_response({"prompt": self.text(body["tokens"])})

    def render(self, body: dict[str, Any]) -> str:  # type: ignore[override]
        messages = body["messages"]
        asked = [index for index, message in enumerate(messages) if message["role"] == "user"]
        out = ""
        for index, message in enumerate(messages):
            content = message["content"]
            if self.forgetful and asked and message["role"] == "user" and index != asked[-1]:
                content = "(asked)"
            if self.counting and asked and index == asked[-1]:
                content += f" [{sum(len(messages[at]['content']) for at in asked[:-1])}]"
            out += f"<turn>{message['role']}\n{content}<eot>\n"
        return out + "<turn>assistant\n"

    def whole(self) -> list[dict[str, Any]]:
        """The chat bodies tokenised with neither the marker nor a stand-in: whole requests."""
        return [
            body
            for body in self.tokenised()
            if "messages" in body and MARKER not in json.dumps(body, ensure_ascii=False)
        ]

    def expected(self, sent: dict[str, Any]) -> list[int]:
        """The server's own tokens of a sent request, its snapshot in place of the marker."""
        snapshot = self.whole()[0]["messages"][0]
        return self.ids(self.render({"messages": [snapshot, *sent["messages"][1:]]}), True)


async def vllm(aiohttp_server: Any) -> FakeVllm:
    fake = FakeVllm()
    fake.url = str((await aiohttp_server(fake.app(), host="127.0.0.1")).make_url("/v1"))
    return fake


async def proxy(tmp_path: Path, repo: GitRepo, fake: FakeVllm, aiohttp_client: Any) -> TestClient:
    context = {"conversations": "on"}
    config = proxy_config(tmp_path, repo, fake.url, upstream={"prompt": "tokens"}, context=context)
    return await aiohttp_client(make_app(config))


async def converse(client: TestClient, fake: FakeVllm, repo: GitRepo, turns: int) -> list[list[Any]]:
    """A conversation of long questions, the work tree edited between turns; what the tokenizer
    was asked each turn. Every request must go as the server's own tokens of its whole prompt."""
    history: list[dict[str, str]] = []
    asked = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"Question {turn}: {LONG}"})
        before = len(fake.tokenised())
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": history})
        assert response.status == 200 and response.headers["X-Scout-Prompt"] == "tokens"
        history.append({"role": "assistant", "content": f"Answer {turn}: {LONG}"})
        sent = fake.asked("/v1/chat/completions")[-1]
        assert sent["kv_transfer_params"]["prompt_token_ids"] == fake.expected(sent)
        asked.append(fake.tokenised()[before:])
        repo.write("src/app.py", f"def main():\n    return {turn}\n")
    assert "return 2" in fake.text(sent["kv_transfer_params"]["prompt_token_ids"])  # the edits reached it
    return asked


async def test_a_conversations_history_is_not_tokenised_again_on_vllm(
    tmp_path: Path, git_repo: GitRepo, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = await vllm(aiohttp_server)
    client = await proxy(tmp_path, git_repo, fake, aiohttp_client)
    asked = await converse(client, fake, git_repo, 5)
    for turn in (3, 4):  # past the epoch's one check (turn 2's), no earlier question or answer in full
        text = json.dumps(asked[turn], ensure_ascii=False)
        assert f"Question {turn}: {LONG}" in text
        assert all(f"Question {earlier}: {LONG}" not in text for earlier in range(turn))
        assert f"Answer {turn - 1}: {LONG}" in text  # the answer the client added since
        assert all(f"Answer {earlier}: {LONG}" not in text for earlier in range(turn - 1))
        assert stand_in(f"Answer {turn - 2}: {LONG}") in text  # stood in for
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_checks_total{outcome="conversation match"} 1' in metrics
    assert 'scout_prompt_checks_total{outcome="conversation mismatch"}' not in metrics
    assert len(fake.asked("/detokenize")) < 10  # the special tokens are asked about once each


async def test_a_template_that_rewrites_earlier_turns_has_them_tokenised_whole(
    tmp_path: Path, git_repo: GitRepo, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = await vllm(aiohttp_server)
    fake.forgetful = True
    client = await proxy(tmp_path, git_repo, fake, aiohttp_client)
    asked = await converse(client, fake, git_repo, 4)
    assert all(any(f"Answer {turn - 1}: {LONG}" in json.dumps(body) for body in asked[turn]) for turn in (2, 3))
    metrics = await (await client.get("/metrics")).text()
    assert 'outcome="conversation' not in metrics  # the stood-in bodies part early: nothing is grown


async def test_a_template_that_reads_what_it_does_not_write_fails_the_check(
    tmp_path: Path, git_repo: GitRepo, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = await vllm(aiohttp_server)
    fake.counting = True  # the stand-ins' lengths would show in the new turn's ids
    client = await proxy(tmp_path, git_repo, fake, aiohttp_client)
    await converse(client, fake, git_repo, 4)
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_checks_total{outcome="conversation mismatch"} 1' in metrics


def test_a_stand_in_keeps_short_texts_and_the_ends_of_long_ones() -> None:
    assert stand_in("short") == "short" and stand_in("x" * SHORT) == "x" * SHORT
    long = "<tool_response>" + "x" * 100 + "</tool_response>"
    assert stand_in(long) == long[:EDGE] + "\u2026" + long[-EDGE:]
    call = {"id": "c", "type": "function", "function": {"name": "write", "arguments": json.dumps({"text": LONG})}}
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": LONG}],
        "tool_calls": [call],
        "reasoning": LONG,
    }
    stood = stood_in(message)
    assert stood["content"] == [{"type": "text", "text": stand_in(LONG)}] and stood["reasoning"] == stand_in(LONG)
    assert stood["tool_calls"] == [{**call, "function": {"name": "write", "arguments": "{}"}}]
    assert stood_in({"role": "user", "content": None}) == {"role": "user", "content": None}


def test_only_the_text_after_the_snapshots_marker_is_stood_in_for() -> None:
    system = {"role": "system", "content": f"# Snapshot\n{MARKER}\n# Working diff\n{LONG}"}
    assert after_marker(system, MARKER)["content"] == f"# Snapshot\n{MARKER}" + stand_in(f"\n# Working diff\n{LONG}")
    assert after_marker({"role": "system", "content": [{"type": "text", "text": MARKER}]}, MARKER)["content"] == [
        {"type": "text", "text": MARKER}
    ]


def test_a_key_names_the_fields_and_every_message_before_it() -> None:
    one, two = {"role": "user", "content": "a"}, {"role": "user", "content": "b"}
    keys = prefix_keys({"model": "m"}, [one, two])
    assert len(keys) == 3 and keys[:2] == prefix_keys({"model": "m"}, [one])
    assert prefix_keys({"model": "m"}, [two, two])[2] != keys[2]
    assert prefix_keys({"model": "m", "tools": []}, [one])[1] != keys[1]


def test_two_sequences_part_where_their_ids_first_differ() -> None:
    assert parting(array("i", [1, 2, 3, 4]), array("i", [1, 2, 5])) == 2
    assert parting(array("i", [1, 2]), array("i", [1, 2, 3])) == 2
    assert parting(array("i"), array("i", [1])) == 0


def test_the_earlier_ids_are_kept_only_where_no_stood_in_text_follows_the_cut() -> None:
    own = array("i", [9, 5, 5, 5, 1, 7, 8])  # an earlier request: its own long text, then <1>, 7, 8
    stood = array("i", [9, 6, 1, 7, 8])  # the same, its text stood in for
    later = array("i", [9, 6, 1, 7, 3, 3])  # the new request, stood in for the same way
    assert spliced(own, stood, later, 3) == array("i", [9, 5, 5, 5, 1, 7, 3, 3])  # cut after <1>
    assert spliced(own, stood, later, 2) is None  # the stood-in text would follow the cut
    assert spliced(own, stood, later, 0) is None
