"""The one recogniser of an over-long prompt, on each server's recorded answer, and the figures
each client is told."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web

from scout_diff_cache.apis.chat import CHAT
from scout_diff_cache.apis.messages import MESSAGES
from scout_diff_cache.apis.responses import RESPONSES
from scout_diff_cache.errors import ContextTooLong, UpstreamRejected
from scout_diff_cache.upstream.client import error_from_answer
from scout_diff_cache.upstream.overflow import context_too_long

from support import (
    LLAMA_OVERFLOW,
    SGLANG_OVERFLOW,
    VLLM_MESSAGES_OVERFLOW,
    VLLM_OVERFLOW,
    FakeUpstream,
    ProxyFactory,
    refuses_as_too_long,
)

ASKED = {"role": "user", "content": "Where is main?"}
REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": [ASKED]},
    "/v1/responses": {"model": "m", "input": [ASKED]},
    "/v1/messages": {"model": "m", "max_tokens": 8, "messages": [ASKED]},
}


@pytest.mark.parametrize(
    ("body", "tokens", "window"),
    [
        (VLLM_OVERFLOW, 8193, 8192),
        (VLLM_MESSAGES_OVERFLOW, 8193, 8192),
        (LLAMA_OVERFLOW, 231131, 16384),
        (SGLANG_OVERFLOW, 9000, 8192),
    ],
    ids=["vllm", "vllm-messages", "llama.cpp", "sglang"],
)
def test_each_servers_overflow_is_recognised_with_its_figures(body: dict[str, Any], tokens: int, window: int) -> None:
    found = context_too_long(400, body)
    assert found is not None and (found.tokens, found.window) == (tokens, window)
    assert (found.status, found.type, found.code) == (400, "invalid_request_error", "context_length_exceeded")


def test_an_unrelated_400_stays_the_upstreams_own_rejection() -> None:
    body = {"error": {"message": "'messages' is a required property", "type": "BadRequestError", "code": 400}}
    assert context_too_long(400, body) is None
    error = error_from_answer(400, json.dumps(body).encode())
    assert type(error) is UpstreamRejected and error.message == "'messages' is a required property"


def test_an_overflow_is_an_upstream_rejection_found_when_the_answer_is_read() -> None:
    error = error_from_answer(400, json.dumps(LLAMA_OVERFLOW).encode())
    assert isinstance(error, ContextTooLong) and isinstance(error, UpstreamRejected)


def test_llama_cpps_fields_count_and_its_type_alone_is_enough() -> None:
    said = {"error": {"type": "exceed_context_size_error", "message": "too big", "n_prompt_tokens": 20, "n_ctx": 16}}
    found = context_too_long(400, said)
    assert found is not None and (found.tokens, found.window) == (20, 16)
    bare = context_too_long(400, {"error": {"type": "exceed_context_size_error", "message": "too big"}})
    assert bare is not None and (bare.tokens, bare.window) == (None, None)


def test_an_openai_or_anthropic_compatible_upstreams_own_overflow_is_kept() -> None:
    openai = {"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}
    assert context_too_long(400, openai) is not None
    anthropic = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 9 tokens > 8 maximum"},
    }
    found = context_too_long(400, anthropic)
    assert found is not None and (found.tokens, found.window) == (9, 8)


def test_room_for_the_answer_that_does_not_fit_names_no_overshoot() -> None:
    """vLLM's "max_tokens too large": the prompt itself is within the window, so no "N > M"."""
    message = (
        "'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum context length is 8192"
        " tokens and your request has 7500 input tokens (1000 > 8192 - 7500)."
    )
    found = context_too_long(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
    assert found is not None and (found.tokens, found.window) == (None, 8192)


def test_a_server_failure_is_not_an_overflow_whatever_it_says() -> None:
    assert context_too_long(500, VLLM_OVERFLOW) is None
    assert context_too_long(400, "maximum context length") is None


def test_each_dialect_words_the_overflow_its_clients_compact_on() -> None:
    error = ContextTooLong("request (231131 tokens) exceeds …", 231131, 16384)
    chat = json.loads(CHAT.error_body(error))["error"]
    assert (chat["code"], chat["type"], chat["param"]) == (
        "context_length_exceeded",
        "invalid_request_error",
        "messages",
    )
    assert "maximum context length is 16384 tokens" in chat["message"] and "231131 tokens" in chat["message"]
    assert json.loads(RESPONSES.error_body(error))["error"]["param"] == "input"
    assert json.loads(MESSAGES.error_body(error)) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 231131 tokens > 16384 maximum"},
    }


def test_without_figures_the_anthropic_message_still_starts_as_claude_code_expects() -> None:
    error = ContextTooLong("the request exceeds the context size")
    said = json.loads(MESSAGES.error_body(error))["error"]["message"]
    assert said == "prompt is too long: the request exceeds the context size"
    assert json.loads(CHAT.error_body(error))["error"]["message"] == "the request exceeds the context size"


def test_the_client_counted_figures_leave_the_injected_tokens_out_and_keep_the_overshoot() -> None:
    error = ContextTooLong("…", 231131, 16384)
    told = error.less(1000)
    assert (told.tokens, told.window) == (230131, 15384)
    assert error.less(16384) is error  # the injected context alone fills the window: the upstream's figures
    assert ContextTooLong("…", None, 8192).less(100).window == 8192


@pytest.mark.parametrize(
    ("chat", "messages", "tokens", "window"),
    [
        (VLLM_OVERFLOW, VLLM_MESSAGES_OVERFLOW, 8193, 8192),
        (LLAMA_OVERFLOW, None, 231131, 16384),
        (SGLANG_OVERFLOW, None, 9000, 8192),
    ],
    ids=["vllm", "llama.cpp", "sglang"],
)
async def test_an_over_long_prompt_reaches_every_api_as_its_clients_overflow(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    chat: dict[str, Any],
    messages: dict[str, Any] | None,
    tokens: int,
    window: int,
) -> None:
    """Streaming or not: the upstream refuses before its first byte, so the client gets the 400 itself."""
    upstream.behaviour = refuses_as_too_long(chat, messages)
    client = await make_proxy()
    for path, body in REQUESTS.items():
        for stream in (False, True):
            answer = await client.post(path, json={**body, "stream": stream})
            assert answer.status == 400, (path, stream)
            error = (await answer.json())["error"]
            if path == "/v1/messages":
                assert error == {
                    "type": "invalid_request_error",
                    "message": f"prompt is too long: {tokens} tokens > {window} maximum",
                }
            else:
                assert (error["code"], error["type"]) == ("context_length_exceeded", "invalid_request_error")
                assert error["param"] == ("messages" if path == "/v1/chat/completions" else "input")
                assert f"maximum context length is {window} tokens" in error["message"]


async def test_with_usage_for_the_client_the_figures_leave_the_injected_context_out(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """The client's meter never counted the snapshot: the message counts as it does, the overshoot
    the upstream's."""
    upstream.behaviour = refuses_as_too_long(LLAMA_OVERFLOW)
    client = await make_proxy(context={"usage": "client"})
    answer = await client.post("/v1/messages", json=REQUESTS["/v1/messages"])
    said = (await answer.json())["error"]["message"]
    found = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", said)
    assert found is not None, said
    told, most = int(found[1]), int(found[2])
    assert 0 < most < 16384 and told - most == 231131 - 16384
    openai = await client.post("/v1/chat/completions", json=REQUESTS["/v1/chat/completions"])
    assert f"maximum context length is {most} tokens" in (await openai.json())["error"]["message"]


async def test_a_stream_that_already_sent_keep_alives_ends_with_the_overflow_event(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    refuse = refuses_as_too_long(LLAMA_OVERFLOW)

    async def slowly(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return await refuse(request, fake)

    upstream.behaviour = slowly
    client = await make_proxy(server={"sse_keepalive_interval": "100ms"})
    for path, body in REQUESTS.items():
        answer = await client.post(path, json={**body, "stream": True})
        assert answer.status == 200
        event = (await answer.read()).split(b"\n\n")[-2].split(b"\n")[-1]
        error = json.loads(event.removeprefix(b"data: "))
        if path == "/v1/messages":
            assert error["error"]["message"] == "prompt is too long: 231131 tokens > 16384 maximum"
        elif path == "/v1/responses":
            assert (error["type"], error["code"], error["param"]) == ("error", "context_length_exceeded", "input")
        else:
            assert error["error"]["code"] == "context_length_exceeded"
