"""The Responses and Messages APIs, the /v1 pass-through, and usage as clients are told it.

Each test parses what the upstream received and checks it against the repository: the snapshot
first and whole, the client's own system text and fields untouched after it, the working diff,
then the client's messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from scout_diff_cache.apis.messages import without_billing_header

from reconstruction import (
    check,
    check_conversation,
    compare,
    parse_change_message,
    parse_diff,
    parse_snapshot,
    reconstruct,
)
from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    answer_stream,
    anthropic_message,
    chat,
    counted,
    event_stream,
    is_warmup,
    response_object,
    stream_events,
    until,
    until_async,
)

TOOLS = [{"type": "function", "name": "read", "parameters": {"type": "object", "properties": {}}}]
INSTRUCTIONS = "You are a coding agent. Follow the user's lead."
QUESTION = "What does main return?"
SYSTEM_BLOCKS = [
    {"type": "text", "text": "You are Claude Code."},
    {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
]


def responses_request(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "instructions": INSTRUCTIONS, "input": list(items), "tools": TOOLS, **fields}


def messages_request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "system": SYSTEM_BLOCKS, "messages": list(messages), **fields}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def responses_as_chat(body: dict[str, Any], instructions: str | None = INSTRUCTIONS) -> list[dict[str, Any]]:
    """The upstream's Responses body as the chat messages its template sees: the snapshot (the
    instructions up to the client's own), then the input items."""
    text = body["instructions"]
    if instructions is not None:
        assert text.endswith("\n\n" + instructions)
        text = text[: -len(instructions) - 1]
    return [{"role": "system", "content": text}, *body["input"]]


def messages_context(body: dict[str, Any], question: str) -> tuple[str, str]:
    """The snapshot (the first system block) and the working diff (the first message's opening)."""
    snapshot = body["system"][0]["text"]
    assert snapshot.endswith("\n") and "cache_control" not in body["system"][0]
    content = body["messages"][0]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    if isinstance(content, str):
        assert text.endswith(question)
        text = text[: -len(question)]
    return snapshot[:-1], text


async def test_responses_put_the_snapshot_first_in_instructions_and_the_diff_before_the_input(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    client = await make_proxy()
    sent = responses_request(user(QUESTION), store=False, prompt_cache_key="abc")
    response = await client.post("/v1/responses", json=sent)
    assert response.status == 200, await response.text()
    assert (await response.json())["usage"]["input_tokens"] == counted(upstream.asked[-1].raw)  # usage = upstream
    assert response.headers["X-Scout-Conversation"] == "new"
    body = upstream.asked[-1].json
    assert upstream.asked[-1].path == "/v1/responses"
    assert body["instructions"].startswith("# Repository snapshot\n")
    assert {key: body[key] for key in ("model", "tools", "store", "prompt_cache_key")} == {
        key: sent[key] for key in ("model", "tools", "store", "prompt_cache_key")
    }
    messages = responses_as_chat(body)
    assert messages[1]["role"] == "system" and messages[1]["content"].startswith("# Working diff")
    assert messages[2:] == [user(QUESTION)]
    check_conversation(messages, git_repo.path)


async def test_responses_take_a_string_input_and_no_instructions(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    assert (await client.post("/v1/responses", json={"input": QUESTION})).status == 200
    body = upstream.asked[-1].json
    assert body["model"] == "llama-4-scout"  # the configured model, as for chat
    messages = responses_as_chat(body, instructions=None)
    assert messages[2:] == [user(QUESTION)]
    check_conversation(messages, git_repo.path)


async def test_responses_continue_a_conversation_with_a_change_before_the_new_question(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    first = [user(QUESTION)]
    assert (await client.post("/v1/responses", json=responses_request(*first))).status == 200
    before = upstream.asked[-1].raw
    git_repo.write("src/util.py", "def add(a, b):\n    return b + a\n")
    answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]}
    later = [*first, answer, user("And now?")]
    response = await client.post("/v1/responses", json=responses_request(*later))
    assert response.headers["X-Scout-Conversation"] == "continued"
    after = upstream.asked[-1]
    assert after.raw.startswith(before[: before.index(b',{"role":"user"')])  # the same prefix, byte for byte
    messages = responses_as_chat(after.json)
    assert messages[3] == answer and messages[4]["role"] == "system" and messages[5] == user("And now?")
    assert "+    return b + a" in messages[4]["content"]
    check_conversation(messages, git_repo.path)


async def test_responses_with_a_previous_response_get_the_snapshot_and_the_current_diff(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    sent = responses_request(user("And now?"), previous_response_id="resp_0")
    response = await client.post("/v1/responses", json=sent)
    assert response.headers["X-Scout-Conversation"] == "off"
    body = upstream.asked[-1].json
    assert body["previous_response_id"] == "resp_0"
    check_conversation(responses_as_chat(body), git_repo.path)


async def test_responses_stream_is_relayed_event_by_event(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.behaviour = answer_stream
    client = await make_proxy()
    response = await client.post("/v1/responses", json=responses_request(user(QUESTION), stream=True))
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    assert await response.read() == b"".join(stream_events("/v1/responses", counted(upstream.asked[-1].raw)))


async def test_messages_keep_the_clients_system_blocks_after_the_whole_snapshot(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("notes.txt", "untracked\n")
    client = await make_proxy()
    sent = messages_request(user(QUESTION), metadata={"user_id": "u"}, thinking={"type": "disabled"})
    response = await client.post("/v1/messages?beta=true", json=sent, headers={"anthropic-version": "2023-06-01"})
    assert response.status == 200, await response.text()
    body = upstream.asked[-1].json
    assert upstream.asked[-1].path == "/v1/messages"  # the query is Anthropic's own, not the upstream's
    assert "anthropic-version" not in upstream.asked[-1].headers
    assert body["system"][1:] == SYSTEM_BLOCKS  # cache_control markers untouched
    assert {key: body[key] for key in ("model", "max_tokens", "metadata", "thinking")} == {
        key: sent[key] for key in ("model", "max_tokens", "metadata", "thinking")
    }
    snapshot, diff = messages_context(body, QUESTION)
    check(snapshot, diff, git_repo.path)
    assert "notes.txt" in diff


async def test_messages_take_system_turns_among_the_messages_as_claude_code_sends_them(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    agents = {"role": "system", "content": "Available agent types for the Agent tool: ..."}
    response = await client.post("/v1/messages", json=messages_request(user(QUESTION), agents))
    assert response.status == 200, await response.text()
    body = upstream.asked[-1].json
    assert body["messages"][1] == agents
    check(*messages_context(body, QUESTION), git_repo.path)


async def test_messages_with_a_string_system_and_a_list_first_message(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    first = {"role": "user", "content": [{"type": "text", "text": QUESTION}]}
    sent = {"model": "m", "max_tokens": 8, "system": "Be brief.", "messages": [first]}
    assert (await client.post("/v1/messages", json=sent)).status == 200
    body = upstream.asked[-1].json
    assert body["system"][1:] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"][0]["content"][1:] == first["content"]
    check(*messages_context(body, QUESTION), git_repo.path)


async def test_messages_place_a_change_inside_the_last_tool_result(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "scout_diff_cache")
    client = await make_proxy()
    call = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "edit", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "edited"}]}
    assert (await client.post("/v1/messages", json=messages_request(user(QUESTION)))).status == 200
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    response = await client.post("/v1/messages", json=messages_request(user(QUESTION), call, result))
    assert response.headers["X-Scout-Conversation"] == "continued"
    body = upstream.asked[-1].json
    assert body["messages"][1] == call
    (block,) = body["messages"][2]["content"]
    own, change = block["content"].split("\n\n", 1)
    assert own == "edited" and block["tool_use_id"] == "t1"
    snapshot, diff = messages_context(body, QUESTION)
    parsed = parse_diff(diff)
    changed = attrs.evolve(parsed, groups=(*parsed.groups, parse_change_message(change)))
    compare(reconstruct(parse_snapshot(snapshot), changed), git_repo.path)
    logged = [int(found[1]) for record in caplog.records if (found := re.search(r"injected=(\d+)", record.message))]
    assert logged[-1] == logged[-2] + len(change.encode())  # the log counts the change it put in


async def test_messages_stream_and_errors_in_anthropics_envelope(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.behaviour = answer_stream
    client = await make_proxy()
    response = await client.post("/v1/messages", json=messages_request(user(QUESTION), stream=True))
    assert await response.read() == b"".join(stream_events("/v1/messages", counted(upstream.asked[-1].raw)))
    refused = await client.post("/v1/messages", json={"model": "m", "messages": []})
    assert refused.status == 400
    assert (await refused.json())["type"] == "error"
    assert (await refused.json())["error"]["type"] == "invalid_request_error"

    async def rejects(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        error = {"code": 400, "message": "the request has no valid tool", "type": "invalid_request_error"}
        return web.json_response({"error": error}, status=400)

    upstream.behaviour = rejects
    rejected = await client.post("/v1/messages", json=messages_request(user(QUESTION)))
    assert rejected.status == 400
    assert await rejected.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "the request has no valid tool"},
    }


async def test_count_tokens_counts_the_clients_own_request_or_the_whole(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    sent = messages_request(user(QUESTION))
    own = await make_proxy(context={"usage": "client"})
    answer = await (await own.post("/v1/messages/count_tokens?beta=true", json=sent)).json()
    assert upstream.asked[-1].json == sent and answer == {"input_tokens": counted(upstream.asked[-1].raw)}
    whole = await make_proxy(context={"usage": "upstream"})
    answer = await (await whole.post("/v1/messages/count_tokens", json=sent)).json()
    assert upstream.asked[-1].json["system"][0]["text"].startswith("# Repository snapshot")
    assert answer["input_tokens"] > counted(json.dumps(sent).encode()) * 5


def usage_in(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The usage object wherever the API keeps it, if it counts the prompt."""
    for holder in (payload, payload.get("response"), payload.get("message")):
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(usage, dict) and ("prompt_tokens" in usage or "input_tokens" in usage):
            return usage
    return None


def prompt_of(api: str, usage: dict[str, Any]) -> tuple[int, int]:
    """A usage's prompt tokens (all of them) and cached tokens, as each API counts them."""
    if api == "messages":
        return usage["input_tokens"] + usage["cache_read_input_tokens"], usage["cache_read_input_tokens"]
    if api == "responses":
        return usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"]
    return usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


async def counting(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
    """Every API's answer, its usage counting a token per 4 bytes of the body it got."""
    prompt = counted(await request.read())
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
    usage["prompt_tokens_details"] = {"cached_tokens": prompt * 9 // 10}
    if request.path == "/v1/chat/completions" and not (await request.json()).get("stream"):
        return web.json_response({"choices": [], "usage": usage})
    if request.path == "/v1/chat/completions":
        response = await event_stream(request)
        await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response
    if (await request.json()).get("stream"):
        return await answer_stream(request, fake)
    if request.path == "/v1/responses":
        return web.json_response(response_object(prompt))
    return web.json_response(anthropic_message(prompt))


async def test_usage_client_takes_the_injected_tokens_out_on_every_api(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    """The client is told about its own request only: what the upstream counted, less what the
    proxy's warm-up measured for the injected context. /metrics keeps the upstream's figures."""
    upstream.behaviour = counting
    client = await make_proxy(context={"usage": "client"})
    requests: dict[str, tuple[str, dict[str, Any]]] = {
        "chat": ("/v1/chat/completions", {"model": "m", "messages": [user(QUESTION)]}),
        "responses": ("/v1/responses", {"model": "m", "input": [user(QUESTION)]}),
        "messages": ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": [user(QUESTION)]}),
    }
    for api, (path, sent) in requests.items():
        for stream in (False, True):
            body = {**sent, "stream": stream}
            if api == "chat" and stream:
                body["stream_options"] = {"include_usage": True}
            response = await client.post(path, json=body)
            assert response.status == 200, await response.text()
            usage: dict[str, Any] | None = None
            if stream:
                lines = (await response.read()).split(b"\n")
                found = [usage_in(json.loads(line[5:])) for line in lines if line.startswith(b"data: {")]
                usage = [usage for usage in found if usage is not None][-1]
            else:
                usage = usage_in(await response.json())
            assert usage is not None
            told, cached = prompt_of(api, usage)
            upstream_counted = counted(upstream.asked[-1].raw)
            own = counted(json.dumps(sent).encode())
            assert 0 <= cached <= told
            assert abs(told - own) <= 40, (api, stream, told, own, upstream_counted)  # templates and framing aside
            assert upstream_counted > 10 * told  # the repository is most of what the upstream counted
    metrics = await (await client.get("/metrics")).text()
    total = sum(counted(seen.raw) for seen in upstream.asked)
    assert f"scout_upstream_prompt_tokens_total {total}" in metrics
    for api in requests:
        own = sum(counted(seen.raw) for seen in upstream.asked if seen.path == requests[api][0])
        assert f'scout_api_prompt_tokens_total{{api="{api}"}} {own}' in metrics
    warmups = [seen for seen in upstream.seen if seen not in upstream.asked]
    assert len(warmups) == 2  # one measuring warm-up, and the question alone, once


async def test_passthrough_forwards_its_routes_without_the_clients_key(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("client-key\n")
    client = await make_proxy(
        server={"api_keys_file": str(keys)}, upstream={"api_key": "upstream-key", "passthrough_routes": "files"}
    )
    headers = {"x-api-key": "client-key", "X-Custom": "kept", "Cookie": "session=1"}
    response = await client.post("/v1/embeddings?dims=8", data=b'{"input": "x"}', headers=headers)
    assert response.status == 201 and await response.json() == {"method": "POST", "path": "/v1/embeddings?dims=8"}
    seen = upstream.asked[-1]
    assert seen.raw == b'{"input": "x"}' and seen.headers["X-Custom"] == "kept" and "Cookie" not in seen.headers
    assert seen.headers["Authorization"] == "Bearer upstream-key" and "x-api-key" not in {
        h.lower() for h in seen.headers
    }
    assert (await client.delete("/v1/files/f1", headers={"Authorization": "Bearer client-key"})).status == 201
    assert upstream.asked[-1].path == "/v1/files/f1"
    assert (await client.post("/v1/embeddings", data=b"{}")).status == 401
    anthropic = await client.post("/v1/messages", json=messages_request(user(QUESTION)))
    assert anthropic.status == 401 and (await anthropic.json())["error"]["type"] == "authentication_error"
    assert (await client.head("/")).status == 200  # a client's probe needs no key


async def test_the_concurrency_cap_holds_on_every_upstream_route(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def held(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await fake.release.wait()
        return web.json_response({})

    upstream.behaviour = held
    client = await make_proxy(server={"max_concurrent_requests": "1"}, context={"inject": "false"})
    first = asyncio.ensure_future(client.post("/v1/embeddings", json={}))
    await until(lambda: upstream.seen)
    routes = {"/v1/responses": {"input": "x"}, "/v1/messages": messages_request(user("x")), "/v1/tokenize": {}}
    for path, body in routes.items():
        refused = await client.post(path, json=body)
        assert refused.status == 429, path
    upstream.release.set()
    assert (await first).status == 200


async def test_a_stalled_stream_ends_with_each_apis_own_error_event(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def stalls(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        await response.write(stream_events(request.path, 10)[0])
        await asyncio.sleep(5)
        return response

    upstream.behaviour = stalls
    client = await make_proxy(upstream={"idle_timeout": "300ms"})
    sent = await client.post("/v1/messages", json=messages_request(user(QUESTION), stream=True))
    last = (await sent.read()).split(b"\n\n")[-2].split(b"\n")
    assert last[0] == b"event: error"
    assert json.loads(last[1][5:])["error"]["type"] == "api_error"
    sent = await client.post("/v1/responses", json=responses_request(user(QUESTION), stream=True))
    last = (await sent.read()).split(b"\n\n")[-2].split(b"\n")
    assert last[0] == b"event: error"
    error = json.loads(last[1][5:])
    assert error["type"] == "error" and error["code"] == "upstream_timeout"


async def test_a_messages_conversation_continues_when_the_client_moves_its_cache_markers(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """Claude Code marks its newest turn with cache_control on every request: the turns it marked
    before come back unmarked, and are still the same turns."""
    client = await make_proxy()
    marked = {"type": "text", "text": QUESTION, "cache_control": {"type": "ephemeral"}}
    first = await client.post("/v1/messages", json=messages_request({"role": "user", "content": [marked]}))
    assert first.headers["X-Scout-Conversation"] == "new"
    unmarked = {"role": "user", "content": [{"type": "text", "text": QUESTION}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}
    newest = {"role": "user", "content": [{**marked, "text": "And now?"}]}
    second = await client.post("/v1/messages", json=messages_request(unmarked, answer, newest))
    assert second.headers["X-Scout-Conversation"] == "continued"
    assert upstream.asked[-1].json["messages"][2] == newest  # sent as the client sent it


async def test_an_upstream_that_reports_no_usage_is_measured_once_and_relayed_as_it_came(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def no_usage(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})

    upstream.behaviour = no_usage
    client = await make_proxy(context={"usage": "client"})
    for _ in range(3):
        response = await client.post("/v1/chat/completions", json={"messages": [user(QUESTION)]})
        assert await response.json() == {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    assert len(upstream.seen) - len(upstream.asked) == 2  # the question alone and one warm-up, not one per request


async def test_usage_is_counted_when_the_client_leaves_after_the_completed_event(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """Codex CLI hangs up once it has `response.completed`, before the upstream ends its stream."""

    async def lingers(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        for event in stream_events(request.path, 1000):
            await response.write(event)
        await asyncio.sleep(1)  # the proxy notices the client gone when it next writes
        return response

    upstream.behaviour = lingers
    client = await make_proxy()
    response = await client.post("/v1/responses", json=responses_request(user(QUESTION), stream=True))
    seen = b""
    while b"response.completed" not in seen:
        seen += await response.content.readany()
    response.close()

    async def counted_tokens() -> str:
        return await (await client.get("/metrics")).text()

    line = 'scout_api_prompt_tokens_total{api="responses"} 1000'
    await until_async(lambda: _has(counted_tokens(), line), True, timeout=10)


async def _has(text: Awaitable[str], line: str) -> bool:
    return line in (await text).splitlines()


def claude_code_system(nonce: str) -> list[dict[str, Any]]:
    """`system` as Claude Code 2.1.197 sends it (recorded): a billing line whose last three hex
    digits follow the conversation's first prompt, then its own prompt, marked for caching."""
    marked = {"cache_control": {"type": "ephemeral"}}
    return [
        {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.197.{nonce}; cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", **marked},
        {"type": "text", "text": "You are an interactive agent that helps users with software engineering.", **marked},
    ]


@pytest.mark.parametrize(
    ("system", "left"),
    [
        (claude_code_system("123"), claude_code_system("123")[1:]),
        ([{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.ed9;\nBe brief."}], "Be brief."),
        ("x-anthropic-billing-header: cc_version=2.1.197.ed9;\nBe brief.", "Be brief."),
        ("x-anthropic-billing-header: cc_version=2.1.197.ed9;", None),
        (claude_code_system("123")[:1], None),
        (SYSTEM_BLOCKS, SYSTEM_BLOCKS),
        ("Say x-anthropic-billing-header: 1", "Say x-anthropic-billing-header: 1"),  # only at the start
    ],
)
def test_the_billing_line_is_taken_from_the_start_of_system_only(system: Any, left: Any) -> None:
    got = without_billing_header(system)
    if isinstance(left, str):
        assert got in (left, [{"type": "text", "text": left}])
    else:
        assert got == left


async def test_claude_codes_billing_line_does_not_split_conversations_cache(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    client = await make_proxy()
    for nonce, question in (("123", QUESTION), ("ed9", "Another question")):
        sent = {**messages_request(user(question)), "system": claude_code_system(nonce)}
        assert (await client.post("/v1/messages", json=sent)).status == 200
    first, second = (asked.json for asked in upstream.asked if not is_warmup(asked.json))
    assert first["system"] == second["system"]
    assert first["system"][1:] == claude_code_system("123")[1:]
    assert "billing" not in json.dumps(first)


async def test_the_billing_line_is_kept_when_configured(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy(context={"billing_header": "keep"})
    sent = {**messages_request(user(QUESTION)), "system": claude_code_system("123")}
    assert (await client.post("/v1/messages", json=sent)).status == 200
    assert upstream.asked[-1].json["system"][1:] == claude_code_system("123")


async def test_configured_template_variables_go_in_every_body_under_the_clients_own(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """Llama 3.x templates print today's date before the snapshot: pinned, the prefix holds."""
    pinned = {"date_string": "26 Jul 2024", "tools_in_user_message": True}
    client = await make_proxy(upstream={"chat_template_kwargs": json.dumps(pinned)}, context={"usage": "client"})
    own = {"tools_in_user_message": False}
    asked = [
        ("/v1/chat/completions", chat({"role": "user", "content": QUESTION})),
        ("/v1/responses", {**responses_request(user(QUESTION)), "chat_template_kwargs": own}),
        ("/v1/messages", messages_request(user(QUESTION))),
    ]
    for path, body in asked:
        assert (await client.post(path, json=body)).status == 200
    received = [seen.json.get("chat_template_kwargs") for seen in upstream.asked]
    assert received == [pinned, {**pinned, **own}, pinned]
    warmups = [seen.json for seen in upstream.seen if is_warmup(seen.json)]
    assert warmups and all(body["chat_template_kwargs"] == pinned for body in warmups)


async def test_errors_take_the_envelope_of_the_dialect_whose_route_took_the_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    client = await make_proxy()
    counting = await client.post("/v1/messages/count_tokens", json={"model": "m", "messages": []})
    assert counting.status == 400 and (await counting.json())["type"] == "error"
    assert (await counting.json())["error"]["type"] == "invalid_request_error"
    chat = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert chat.status == 400 and (await chat.json())["error"]["code"] == "invalid_request"
    passed = await client.get("/v1/messages/batches")  # the pass-through's route, not the Messages API's
    assert passed.status == 404 and (await passed.json())["error"]["code"] == "not_found"
