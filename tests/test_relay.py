"""Relaying answers: streams chunk by chunk, keep-alives, stalls, disconnects, usage in streams."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    answer_stream,
    chat,
    completion,
    event_stream,
    hang,
    sse_chunk,
    until,
)


async def test_streams_ask_upstream_for_usage_but_strip_it_unless_the_client_asked(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = await event_stream(request)
        await response.write(sse_chunk("hi"))
        usage = {"choices": [], "usage": {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 900}}}
        event = b"data: " + json.dumps(usage).encode() + b"\n\n"
        await response.write(event[:20])  # split mid-event, as networks do
        await response.write(event[20:] + b"data: [DONE]\n\n")
        return response

    upstream.behaviour = behaviour
    client = await make_proxy()
    plain = await (await client.post("/v1/chat/completions", json=chat(stream=True))).text()
    assert upstream.seen[-1].json["stream_options"] == {"include_usage": True}
    assert "usage" not in plain and plain.endswith("data: [DONE]\n\n") and '"hi"' in plain
    asked = await (
        await client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    ).text()
    assert '"cached_tokens": 900' in asked
    totals = (await (await client.get("/health")).json())["totals"]
    assert totals["prompt_tokens"] == 2000 and totals["cached_tokens"] == 1800
    assert 0 < totals["snapshot_tokens_cached"] <= totals["snapshot_tokens"]


async def test_non_streaming_answer_comes_back_byte_for_byte_with_context_headers(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    response = await client.post("/v1/chat/completions", json=chat())
    assert await response.json() == completion()
    assert response.headers["X-Scout-Snapshot-Commit"] == git_repo.head()
    assert int(response.headers["X-Scout-Snapshot-Bytes"]) > 100
    assert int(response.headers["X-Scout-Diff-Bytes"]) > 10


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


async def test_no_first_byte_after_keepalives_ends_the_stream_with_an_error_event(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.behaviour = hang
    client = await make_proxy(upstream={"first_byte_timeout": "500ms"}, server={"sse_keepalive_interval": "100ms"})
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    text = await response.text()
    assert response.status == 200 and text.startswith(": keep-alive")
    assert json.loads(text.strip().split("\n")[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
