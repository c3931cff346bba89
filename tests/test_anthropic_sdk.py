"""The official Anthropic Python SDK as the client, unmodified, with `base_url` at the proxy.

Like the OpenAI SDK, it is not a dependency of the project: this module runs where it is
installed (CI's scratch environment) and is skipped elsewhere.
"""

from __future__ import annotations

from typing import Any

import pytest

from support import (
    LLAMA_OVERFLOW,
    SGLANG_OVERFLOW,
    VLLM_MESSAGES_OVERFLOW,
    VLLM_OVERFLOW,
    FakeUpstream,
    ProxyFactory,
    answer_stream,
    counted,
    refuses_as_too_long,
)

anthropic = pytest.importorskip("anthropic")

MESSAGES = [{"role": "user", "content": "Where is main?"}]


async def sdk_client(make_proxy: ProxyFactory, **sections: dict[str, str]) -> Any:
    """An `anthropic.AsyncAnthropic` at a new proxy; its key goes as `x-api-key`, as Claude Code's does."""
    proxy = await make_proxy(**sections)
    return anthropic.AsyncAnthropic(base_url=str(proxy.make_url("")), api_key="client-key", max_retries=0)


async def test_sdk_messages_create(make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("client-key\n")
    client = await sdk_client(make_proxy, server={"api_keys_file": str(keys)})
    answer = await client.messages.create(model="scout", max_tokens=16, system="Be brief.", messages=MESSAGES)
    assert answer.content[0].text == "ok" and answer.usage.cache_read_input_tokens > 0
    sent = upstream.asked[-1]
    assert sent.json["system"][0]["text"].startswith("# Repository snapshot")
    assert sent.json["system"][1] == {"type": "text", "text": "Be brief."}
    assert "client-key" not in str(sent.headers)


async def test_sdk_messages_stream(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.behaviour = answer_stream
    client = await sdk_client(make_proxy)
    async with client.messages.stream(model="scout", max_tokens=16, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello world" and final.stop_reason == "end_turn"
    prompt = counted(upstream.asked[-1].raw)
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == prompt


async def test_sdk_count_tokens_and_errors(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await sdk_client(make_proxy, context={"usage": "client"})
    counted_answer = await client.messages.count_tokens(model="scout", messages=MESSAGES)
    assert counted_answer.input_tokens == counted(upstream.asked[-1].raw)
    assert upstream.asked[-1].json["messages"] == MESSAGES  # the client's own request, counted as it came
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="scout", max_tokens=16, messages=[])
    assert caught.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("chat", "messages", "figures"),
    [
        (VLLM_OVERFLOW, VLLM_MESSAGES_OVERFLOW, "8193 tokens > 8192 maximum"),
        (LLAMA_OVERFLOW, None, "231131 tokens > 16384 maximum"),
        (SGLANG_OVERFLOW, None, "9000 tokens > 8192 maximum"),
    ],
    ids=["vllm", "llama.cpp", "sglang"],
)
async def test_sdk_sees_an_over_long_prompt_as_claude_code_compacts_on(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    chat: dict[str, Any],
    messages: dict[str, Any] | None,
    figures: str,
) -> None:
    upstream.behaviour = refuses_as_too_long(chat, messages)
    client = await sdk_client(make_proxy)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="scout", max_tokens=16, messages=MESSAGES)
    assert caught.value.status_code == 400 and caught.value.body["error"]["type"] == "invalid_request_error"
    assert caught.value.body["error"]["message"] == f"prompt is too long: {figures}"
    with pytest.raises(anthropic.BadRequestError) as caught:
        async with client.messages.stream(model="scout", max_tokens=16, messages=MESSAGES) as stream:
            await stream.get_final_message()
    assert caught.value.body["error"]["message"].startswith("prompt is too long")
