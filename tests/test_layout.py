"""The context's layout for the upstream's chat template: separate system messages where the
template takes them, one system message where it demands strict alternation (Gemma, Mistral).

The fake upstream here refuses what a strict template refuses, with the words vLLM and llama.cpp
use; each test parses what it received and rebuilds the work tree from it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from scout_diff_cache.errors import UpstreamRejected
from scout_diff_cache.upstream.layout import judge

from reconstruction import as_chat, check, check_conversation, split_strict
from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    UpstreamFactory,
    answer_json,
    chat,
    free_port,
    is_warmup,
    run_cli,
    write_config,
)

REFUSAL = "Conversation roles must alternate user/assistant/user/assistant/..."
CLIENT_SYSTEM = "You are a careful reviewer."
QUESTION = "What does main return?"


def alternates(roles: list[str]) -> bool:
    """What a strict template takes: one optional system message first, then user and assistant
    turns in turn, a user's first."""
    turns = roles[1:] if roles[:1] == ["system"] else roles
    return all(role == ("user" if index % 2 == 0 else "assistant") for index, role in enumerate(turns))


def roles_of(path: str, body: dict[str, Any]) -> list[str]:
    if path == "/v1/responses":
        items = body["input"] if isinstance(body["input"], list) else [{"role": "user"}]
        roles = ["system"] if body.get("instructions") else []
        return roles + [str(item.get("role", "assistant")).replace("developer", "system") for item in items]
    return [message["role"] for message in body["messages"]]


async def strict_template(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
    """An upstream serving Gemma's template: anything but strict alternation is a 400."""
    if not alternates(roles_of(request.path, json.loads(await request.read()))):
        error = {"message": REFUSAL, "type": "BadRequestError", "param": None, "code": 400}
        return web.json_response({"error": error}, status=400)
    return await answer_json(request, upstream)


def sent(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The chat bodies that were neither probes nor warm-ups."""
    return [seen.json for seen in upstream.seen if seen.path.endswith("/chat/completions") and not is_warmup(seen.json)]


async def test_a_template_that_refuses_a_second_system_message_gets_one(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    upstream.behaviour = strict_template
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    client = await make_proxy(context={"layout": "auto"})
    question = chat({"role": "system", "content": CLIENT_SYSTEM}, {"role": "user", "content": QUESTION})
    response = await client.post("/v1/chat/completions", json=question)
    assert response.status == 200, await response.text()
    (body,) = sent(upstream)
    assert [message["role"] for message in body["messages"]] == ["system", "user"]
    snapshot, diff, own = split_strict(body["messages"][0]["content"])
    check(snapshot, diff, git_repo.path)
    assert "+    return 'edited'" in diff and own == CLIENT_SYSTEM
    layout = (await (await client.get("/health")).json())["layout"]
    assert layout["name"] == "strict" and REFUSAL in layout["reason"]


async def test_a_template_that_takes_system_messages_anywhere_keeps_them_separate(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"layout": "auto"})
    question = chat({"role": "system", "content": CLIENT_SYSTEM}, {"role": "user", "content": QUESTION})
    assert (await client.post("/v1/chat/completions", json=question)).status == 200
    (body,) = sent(upstream)
    assert [message["role"] for message in body["messages"]] == ["system", "system", "system", "user"]
    check(body["messages"][0]["content"], body["messages"][1]["content"], git_repo.path)
    layout = (await (await client.get("/health")).json())["layout"]
    assert layout == {"name": "separate", "reason": "the upstream accepts system messages after the first"}


async def test_responses_in_the_strict_layout_carry_the_context_and_leading_developer_text_in_instructions(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    upstream.behaviour = strict_template
    git_repo.write("notes.txt", "new\n")
    client = await make_proxy(context={"layout": "auto"})
    developer = {"role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only."}]}
    asked = {"model": "m", "instructions": CLIENT_SYSTEM, "input": [developer, {"role": "user", "content": QUESTION}]}
    response = await client.post("/v1/responses", json=asked)
    assert response.status == 200, await response.text()
    body = upstream.asked[-1].json
    assert body["input"] == [{"role": "user", "content": QUESTION}]
    snapshot, diff, own = split_strict(body["instructions"])
    check(snapshot, diff, git_repo.path)
    assert own == CLIENT_SYSTEM + "\n\nSandbox: read-only." and "notes.txt" in diff


async def test_messages_are_laid_out_alike_whatever_the_template(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """The Messages API has one system prompt anyway: the diff opens the first user message."""
    upstream.behaviour = strict_template
    client = await make_proxy(context={"layout": "auto"})
    asked = {"model": "m", "max_tokens": 8, "system": CLIENT_SYSTEM, "messages": [{"role": "user", "content": "Hi"}]}
    response = await client.post("/v1/messages", json=asked)
    assert response.status == 200, await response.text()
    assert upstream.asked[-1].json["system"][1] == {"type": "text", "text": CLIENT_SYSTEM}


def turn_body(path: str, turns: list[dict[str, str]]) -> dict[str, Any]:
    if path.endswith("/completions"):
        return chat(*turns)
    if path.endswith("/responses"):
        return {"model": "m", "input": turns}
    return {"model": "m", "max_tokens": 8, "system": CLIENT_SYSTEM, "messages": turns}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
@pytest.mark.parametrize("layout", ["strict", "separate"])
async def test_a_conversation_rebuilds_the_work_tree_after_an_edit_in_either_layout(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, path: str, layout: str
) -> None:
    if layout == "strict":
        upstream.behaviour = strict_template
    client = await make_proxy(context={"layout": layout})
    first = [{"role": "user", "content": QUESTION}]
    later = [*first, {"role": "assistant", "content": "It returns 'hello'."}, {"role": "user", "content": "And now?"}]
    bodies = []
    for turn in (first, later):
        response = await client.post(path, json=turn_body(path, turn))
        assert response.status == 200, await response.text()
        assert response.headers["X-Scout-Conversation"] == ("new" if turn is first else "continued")
        bodies.append(upstream.asked[-1].json)
        git_repo.write("src/util.py", "def add(a, b):\n    return b + a\n")
    before, after = (as_chat(path, body) for body in bodies)
    assert after[: len(before)] == before  # the conversation only grew at its end
    new = [str(message["content"]) for message in after[len(before) :]]
    assert [text.startswith("# Work tree changes") for text in new] in ([False, True], [False, True, False])
    assert new[-1].endswith("And now?")  # the change opens it (strict, Messages) or stands before it
    check_conversation(after, git_repo.path)


async def test_both_layouts_send_the_same_bytes_up_to_the_working_diff(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    for layout in ("separate", "strict"):
        client = await make_proxy(context={"layout": layout, "conversations": "off"})
        assert (await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Hi"}))).status == 200
    separate, strict = (seen.raw for seen in upstream.asked)
    snapshot = json.loads(separate)["messages"][0]["content"]
    common = len(b'{"messages":[{"role":"system","content":"') + len(json.dumps(snapshot, ensure_ascii=False)) - 2
    assert strict[:common] == separate[:common]
    assert json.loads(strict)["messages"][0]["content"].startswith(snapshot + "# Working diff\n")


async def test_a_configured_layout_asks_the_upstream_nothing(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.behaviour = strict_template
    client = await make_proxy(context={"layout": "strict"})
    assert (await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Hi"}))).status == 200
    assert len(upstream.seen) == 1  # the request itself: no probe
    layout = (await (await client.get("/health")).json())["layout"]
    assert layout == {"name": "strict", "reason": "[context] layout = strict"}


async def test_the_layout_is_learned_once_the_upstream_answers_and_again_after_it_was_away(
    make_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    port = free_port()
    client = await make_proxy(url=f"http://127.0.0.1:{port}/v1", context={"layout": "auto"})
    question = chat({"role": "user", "content": "Hi"})
    assert (await client.post("/v1/chat/completions", json=question)).status == 503
    assert (await (await client.get("/health")).json())["layout"]["name"] == "separate"  # not learned yet
    lenient = await make_upstream(port=port)
    assert (await client.post("/v1/chat/completions", json=question)).status == 200
    assert (await (await client.get("/health")).json())["layout"]["name"] == "separate"
    assert lenient.server is not None
    await lenient.server.close()
    assert (await client.post("/v1/chat/completions", json=question)).status == 503
    strict = await make_upstream(port=port)  # the model server came back with a strict template
    strict.behaviour = strict_template
    response = await client.post("/v1/chat/completions", json=question)
    assert response.status == 200, await response.text()
    assert (await (await client.get("/health")).json())["layout"]["name"] == "strict"


def test_the_judgement_reads_only_refusals_of_the_request() -> None:
    refused = UpstreamRejected(400, REFUSAL)
    assert not judge(None, None).strict
    assert judge(refused, None).strict and REFUSAL in judge(refused, None).reason
    both = judge(refused, UpstreamRejected(400, "model not found"))
    assert not both.strict and "model not found" in both.reason
    unknown_model = judge(UpstreamRejected(404, "The model `m` does not exist."), None)
    assert not unknown_model.strict and "check [upstream] model" in unknown_model.reason


async def test_a_probe_the_upstream_cannot_answer_is_not_sent_again_with_every_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def unknown_model(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        if is_warmup(json.loads(await request.read())):
            return web.json_response({"error": {"message": "The model `scout` does not exist."}}, status=404)
        return await answer_json(request, fake)

    upstream.behaviour = unknown_model
    client = await make_proxy(context={"layout": "auto"})
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Hi"}))).status == 200
    assert sum(is_warmup(seen.json) for seen in upstream.seen) == 1  # one probe, refused as a request
    layout = (await (await client.get("/health")).json())["layout"]
    assert layout["name"] == "separate" and "check [upstream] model" in layout["reason"]


async def test_inspect_says_which_layout_and_why(tmp_path: Path, upstream: FakeUpstream, git_repo: GitRepo) -> None:
    upstream.behaviour = strict_template
    sections = {"repository": {"path": str(git_repo.path)}, "upstream": {"url": upstream.url}}
    path = write_config(tmp_path, {**sections, "context": {"state_dir": str(tmp_path / "state")}})
    done = await asyncio.to_thread(run_cli, "--config", str(path), "inspect")
    assert done.returncode == 0, done.stderr
    assert "layout       strict: the upstream refused a second system message" in done.stdout
