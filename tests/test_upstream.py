"""The upstream: its key, its errors as the client is told them, its models."""

from __future__ import annotations

from aiohttp import web

from support import (
    FakeUpstream,
    ProxyFactory,
    answer_json,
    answer_stream,
    chat,
    free_port,
    hang,
    until,
)


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


async def test_body_is_sent_with_a_content_length_not_chunked(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    await (await make_proxy()).post("/v1/chat/completions", json=chat())
    seen = upstream.seen[0]
    assert int(seen.headers["Content-Length"]) == len(seen.raw)
    assert "Transfer-Encoding" not in seen.headers


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


async def test_models_come_from_the_upstream_or_fall_back_to_the_configured_model(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    listed = await (await (await make_proxy()).get("/v1/models")).json()
    assert listed["data"][0]["id"] == "upstream-model"
    client = await make_proxy(url=f"http://127.0.0.1:{free_port()}/v1", upstream={"model": "fallback-model"})
    listed = await (await client.get("/v1/models")).json()
    assert [model["id"] for model in listed["data"]] == ["fallback-model"]


async def test_a_request_on_a_connection_the_upstream_closed_after_a_stream_goes_again(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """llama-server closes its connection after each streamed answer while its headers say
    keep-alive; a request that takes that connection from the pool before the close is seen gets
    no answer ("Server disconnected"). The fake does what the real one does to such a request."""
    streamed: set[object] = set()
    dropped: list[str] = []

    async def closes_after_streams(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
        assert request.transport is not None
        if request.transport in streamed:
            dropped.append(request.path)
            request.transport.close()
            return web.Response()
        if (await request.json()).get("stream"):
            streamed.add(request.transport)
            return await answer_stream(request, upstream)
        return await answer_json(request, upstream)

    upstream.behaviour = closes_after_streams
    client = await make_proxy()
    for _ in range(3):
        answer = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert answer.status == 200
        assert b"[DONE]" in await answer.read()
        answer = await client.post("/v1/chat/completions", json=chat())
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["choices"][0]["message"]["content"] == "ok"
    assert dropped == ["/v1/chat/completions"] * 3
