"""The HTTP API end to end: real proxy, real upstream on 127.0.0.1, real HTTP client."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    chat,
    free_port,
    is_warmup,
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


async def test_unknown_route_wrong_method_and_huge_body(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy(server={"max_body_bytes": "1KiB"})
    response = await client.get("/nothing")
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    response = await client.post("/health")
    assert response.status == 405 and "GET" in (await response.json())["error"]["message"]
    response = await client.post("/v1/chat/completions", json=chat(padding="x" * 2000))
    assert response.status == 413 and "max_body_bytes" in (await response.json())["error"]["message"]
    assert upstream.seen == []


async def test_a_wrong_method_on_the_proxys_own_v1_routes_is_told_which_it_takes(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """The pass-through's catch-all must not swallow them as unknown routes (nor forward them)."""
    client = await make_proxy()
    for method, path, allowed in (
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/messages", "POST"),
        ("POST", "/v1/models", "GET"),
    ):
        response = await client.request(method, path)
        assert response.status == 405, (method, path)
        assert (await response.json())["error"]["message"].endswith(f"use {allowed}")
    assert upstream.seen == []


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
