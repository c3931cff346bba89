"""Validating client requests: what is refused, with a 400 in the API's own envelope."""

from __future__ import annotations

from support import (
    FakeUpstream,
    ProxyFactory,
)


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
