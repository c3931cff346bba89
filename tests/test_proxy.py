"""The HTTP API end to end: real proxy, real upstream on 127.0.0.1, real HTTP client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    answer_stream,
    chat,
    completion,
    event_stream,
    free_port,
    hang,
    is_warmup,
    sse_chunk,
    until,
    until_async,
)


async def test_upstream_receives_snapshot_then_diff_then_client_messages_in_order(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    client = await make_proxy()
    sent: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
        {"role": "user", "content": [{"type": "text", "text": "Second ünïcode question"}]},
    ]
    response = await client.post("/v1/chat/completions", json=chat(*sent))
    assert response.status == 200
    messages = upstream.seen[0].json["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("# Repository snapshot")
    assert isinstance(messages[0]["content"], str)
    assert messages[1]["role"] == "system" and messages[1]["content"].startswith("# Working diff")
    assert messages[2:] == sent


async def test_every_other_field_passes_through_untouched(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy()
    fields = {
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "cache_salt": "tenant-1",
        "chat_template_kwargs": {"enable_thinking": False},
        "seed": 7,
    }
    await client.post("/v1/chat/completions", json=chat(**fields))
    received = upstream.seen[0].json
    assert {key: received[key] for key in fields} == fields
    assert received["model"] == "scout"


async def test_missing_model_gets_the_configured_one(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy(upstream={"model": "configured-model"})
    await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert upstream.seen[0].json["model"] == "configured-model"


async def test_body_is_sent_with_a_content_length_not_chunked(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    await (await make_proxy()).post("/v1/chat/completions", json=chat())
    seen = upstream.seen[0]
    assert int(seen.headers["Content-Length"]) == len(seen.raw)
    assert "Transfer-Encoding" not in seen.headers


async def test_client_credentials_are_not_forwarded_but_the_upstream_key_is(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path
) -> None:
    key_file = tmp_path / "upstream.key"
    key_file.write_text("sk-upstream-secret\n")
    client = await make_proxy(upstream={"api_key_file": str(key_file)})
    await client.post(
        "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer client-key", "Cookie": "session=1"}
    )
    headers = upstream.seen[0].headers
    assert headers["Authorization"] == "Bearer sk-upstream-secret"
    assert "Cookie" not in headers


async def test_non_streaming_answer_comes_back_byte_for_byte_with_context_headers(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    response = await client.post("/v1/chat/completions", json=chat())
    assert await response.json() == completion()
    assert response.headers["X-Scout-Snapshot-Commit"] == git_repo.head()
    assert int(response.headers["X-Scout-Snapshot-Bytes"]) > 100
    assert int(response.headers["X-Scout-Diff-Bytes"]) > 10


async def test_the_context_headers_count_bytes_of_text_as_health_does(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("quoted.py", 'print("ümlaut\ttab")\n' * 20)  # quotes, tabs, lines: encoded longer than text
    client = await make_proxy()
    response = await client.post("/v1/chat/completions", json=chat())
    messages = [seen.json for seen in upstream.seen if not is_warmup(seen.json)][-1]["messages"]
    snapshot, diff = messages[0]["content"], messages[1]["content"]
    assert int(response.headers["X-Scout-Diff-Bytes"]) == len(diff.encode("utf-8"))
    assert int(response.headers["X-Scout-Snapshot-Bytes"]) == len(snapshot.encode("utf-8"))
    health = await (await client.get("/health")).json()
    assert health["snapshot"]["bytes"] == len(snapshot.encode("utf-8"))


async def test_inject_false_sends_the_body_through_untouched(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy(context={"inject": "false"})
    raw = b'{"messages": [{"role": "user", "content": "as is"}],   "stream": false}'
    response = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert upstream.seen[0].raw == raw
    assert "X-Scout-Snapshot-Commit" not in response.headers


async def test_streaming_is_relayed_chunk_by_chunk(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        await response.write(sse_chunk("first"))
        await asyncio.wait_for(fake.release.wait(), 5)
        await response.write(sse_chunk("second"))
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream.behaviour = behaviour
    client = await make_proxy()
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert b'"first"' in first  # arrived while the upstream still holds back the rest
    upstream.release.set()
    rest = await response.content.read()
    assert b'"second"' in rest and rest.endswith(b"data: [DONE]\n\n")


async def test_stream_with_include_usage_passes_the_usage_chunk(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        await response.write(sse_chunk("hi"))
        usage = {"choices": [], "usage": {"prompt_tokens": 50, "prompt_tokens_details": {"cached_tokens": 48}}}
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        return response

    upstream.behaviour = behaviour
    client = await make_proxy()
    body = chat(stream=True, stream_options={"include_usage": True})
    text = await (await client.post("/v1/chat/completions", json=body)).text()
    assert '"cached_tokens": 48' in text
    assert upstream.seen[0].json["stream_options"] == {"include_usage": True}


async def test_keepalive_comments_are_sent_while_the_first_byte_is_slow(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        return await answer_stream(request, fake)

    upstream.behaviour = behaviour
    client = await make_proxy(server={"sse_keepalive_interval": "100ms"})
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    text = await response.text()
    assert response.status == 200
    assert text.startswith(": keep-alive\n\n")
    assert text.count(": keep-alive\n\n") >= 3
    assert '"Hello"' in text and text.endswith("data: [DONE]\n\n")


async def test_client_disconnect_while_waiting_closes_the_upstream_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.behaviour = hang
    client = await make_proxy()
    for stream in (False, True):
        upstream.cancelled = 0
        request = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat(stream=stream)))
        expected = 1 if not stream else 2
        await until(lambda: len(upstream.seen) == expected)  # noqa: B023 (awaited in this iteration)
        request.cancel()
        await until(lambda: upstream.cancelled == 1)


async def test_client_disconnect_mid_stream_closes_the_upstream_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        for _ in range(300):
            await response.write(sse_chunk("tick"))
            await asyncio.sleep(0.05)
        fake.fail("the proxy should have hung up")
        return response

    upstream.behaviour = behaviour
    client = await make_proxy()
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    await response.content.readuntil(b"\n\n")
    response.close()
    await until(lambda: upstream.cancelled == 1)


async def test_a_stalled_stream_ends_with_an_error_event(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        await response.write(sse_chunk("partial"))
        await asyncio.sleep(30)
        fake.fail("the proxy should have hung up")
        return response

    upstream.behaviour = behaviour
    client = await make_proxy(upstream={"idle_timeout": "300ms"})
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    text = await asyncio.wait_for(response.text(), 5)
    events = [block for block in text.split("\n\n") if block]
    assert '"partial"' in events[0]
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_timeout" and "0.3s" in error["message"]
    await until(lambda: upstream.cancelled == 1)


async def test_upstream_4xx_passes_through_with_its_status_and_message(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        error = {
            "error": {
                "message": "the prompt (40000 tokens) exceeds the context size (32768)",
                "type": "invalid_request_error",
                "code": 400,
            }
        }
        return web.json_response(error, status=400)

    upstream.behaviour = behaviour
    client = await make_proxy()
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json=chat(stream=stream))
        assert response.status == 400
        error = (await response.json())["error"]
        assert "exceeds the context size" in error["message"]
        assert error["type"] == "invalid_request_error"


async def test_upstream_5xx_is_a_502(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)

    upstream.behaviour = behaviour
    response = await (await make_proxy()).post("/v1/chat/completions", json=chat())
    assert response.status == 502
    error = (await response.json())["error"]
    assert "CUDA out of memory" in error["message"] and error["code"] == "bad_gateway"


async def test_upstream_garbage_is_a_502(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        return web.Response(text="<html>not json</html>", content_type="text/html")

    upstream.behaviour = behaviour
    response = await (await make_proxy()).post("/v1/chat/completions", json=chat())
    assert response.status == 502
    assert "not JSON" in (await response.json())["error"]["message"]


async def test_upstream_unreachable_is_a_503(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(url=f"http://127.0.0.1:{free_port()}/v1")
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json=chat(stream=stream))
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "upstream_unavailable"


async def test_no_first_byte_in_time_is_a_504(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.behaviour = hang
    client = await make_proxy(upstream={"first_byte_timeout": "300ms"})
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "upstream_timeout"
    await until(lambda: upstream.cancelled == 1)


async def test_no_first_byte_after_keepalives_ends_the_stream_with_an_error_event(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.behaviour = hang
    client = await make_proxy(upstream={"first_byte_timeout": "500ms"}, server={"sse_keepalive_interval": "100ms"})
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    text = await response.text()
    assert response.status == 200 and text.startswith(": keep-alive")
    assert json.loads(text.strip().split("\n")[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"


async def test_bad_requests_get_a_400_envelope(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy()
    bad = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "m"}', "'messages'"),
        (b'{"messages": []}', "'messages'"),
        (b'{"messages": ["hi"]}', "messages[0] must be an object"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user"}]}', "content is required"),
        (b'{"messages": [{"role": "user", "content": [1]}]}', "content[0]"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "'stream'"),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": 3}', "'model'"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
        (b"\xff\xfe", "UTF-8"),
    ]
    for raw, expected in bad:
        response = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
        assert response.status == 400, raw
        error = (await response.json())["error"]
        assert expected in error["message"], (raw, error)
        assert error["type"] == "invalid_request_error"
    assert upstream.seen == []


async def test_unknown_route_wrong_method_and_huge_body(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy(server={"max_body_bytes": "1KiB"})
    response = await client.get("/nothing")
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    response = await client.post("/health")
    assert response.status == 405 and "GET" in (await response.json())["error"]["message"]
    response = await client.post("/v1/chat/completions", json=chat(padding="x" * 2000))
    assert response.status == 413 and "max_body_bytes" in (await response.json())["error"]["message"]
    assert upstream.seen == []


async def test_models_come_from_the_upstream_or_fall_back_to_the_configured_model(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    listed = await (await (await make_proxy()).get("/v1/models")).json()
    assert listed["data"][0]["id"] == "upstream-model"
    client = await make_proxy(url=f"http://127.0.0.1:{free_port()}/v1", upstream={"model": "fallback-model"})
    listed = await (await client.get("/v1/models")).json()
    assert [model["id"] for model in listed["data"]] == ["fallback-model"]


async def test_health_and_ready(make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo) -> None:
    client = await make_proxy()
    await until_async(lambda: ready_status(client), 200)
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["snapshot"]["commit"] == git_repo.head() and health["snapshot"]["bytes"] > 0

    down = await make_proxy(url=f"http://127.0.0.1:{free_port()}/v1")
    response = await down.get("/ready")
    assert response.status == 503
    assert any("cannot reach the upstream" in reason for reason in (await response.json())["reasons"])
    assert (await down.get("/health")).status == 200


async def ready_status(client: TestClient) -> int:
    return (await client.get("/ready")).status
