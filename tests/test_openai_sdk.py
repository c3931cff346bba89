"""The official OpenAI Python SDK as the client, unmodified, with `base_url` at the proxy.

The SDK is not a dependency of the project: this module runs where it is installed (CI installs it
in a scratch environment, as a new user would) and is skipped elsewhere.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from support import (
    LLAMA_OVERFLOW,
    VLLM_OVERFLOW,
    FakeUpstream,
    ProxyFactory,
    answer_stream,
    counted,
    event_stream,
    refuses_as_too_long,
    sse_chunk,
)

openai = pytest.importorskip("openai")


async def sdk_client(make_proxy: ProxyFactory) -> Any:
    """An `openai.AsyncOpenAI` at a new proxy (the SDK is not installed where mypy runs)."""
    proxy = await make_proxy()
    return openai.AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key="unused", max_retries=0)


async def test_sdk_non_streaming(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await sdk_client(make_proxy)
    answer = await client.chat.completions.create(
        model="scout", messages=[{"role": "user", "content": "Where is main?"}]
    )
    assert answer.choices[0].message.content == "ok"
    assert answer.usage.prompt_tokens_details.cached_tokens == 90
    assert upstream.seen[0].json["messages"][2] == {"role": "user", "content": "Where is main?"}


async def test_sdk_streaming_with_include_usage(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        for word in ("Hel", "lo"):
            await response.write(sse_chunk(word))
        usage = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
        }
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        return response

    upstream.behaviour = behaviour
    client = await sdk_client(make_proxy)
    stream = await client.chat.completions.create(
        model="scout",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 8


async def test_sdk_sees_errors_with_status_and_message(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await sdk_client(make_proxy)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="scout", messages=[])
    assert "'messages' must be a non-empty array" in caught.value.message


async def test_sdk_responses_non_streaming_and_streaming(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await sdk_client(make_proxy)
    answer = await client.responses.create(model="scout", instructions="Be brief.", input="Where is main?")
    assert answer.output_text == "ok" and answer.usage.input_tokens_details.cached_tokens > 0
    sent = upstream.asked[-1].json
    assert sent["instructions"].startswith("# Repository snapshot") and sent["instructions"].endswith("\n\nBe brief.")
    assert sent["input"][1] == {"role": "user", "content": "Where is main?"}

    upstream.behaviour = answer_stream
    stream = await client.responses.create(model="scout", input="Where is main?", stream=True)
    events = [event async for event in stream]
    assert [event.type for event in events][-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello world"
    assert events[-1].response.usage.input_tokens == counted(upstream.asked[-1].raw)


async def test_sdk_responses_errors_come_in_openais_envelope(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await sdk_client(make_proxy)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="scout", input=[])
    assert "'input' must be a non-empty string" in caught.value.message


@pytest.mark.parametrize("said", [VLLM_OVERFLOW, LLAMA_OVERFLOW], ids=["vllm", "llama.cpp"])
async def test_sdk_sees_an_over_long_prompt_as_context_length_exceeded(
    make_proxy: ProxyFactory, upstream: FakeUpstream, said: dict[str, Any]
) -> None:
    """What Codex (Responses) and the chat clients compact on, streaming or not."""
    upstream.behaviour = refuses_as_too_long(said)
    client = await sdk_client(make_proxy)
    asked = [{"role": "user", "content": "Where is main?"}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="scout", messages=asked, stream=stream)
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model="scout", input="Where is main?", stream=stream)
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "input")
        assert caught.value.status_code == 400 and "maximum context length" in caught.value.message
