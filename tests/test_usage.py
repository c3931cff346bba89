"""Usage as clients are told it: the pure rewriting rules, and the stream filter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from scout_diff_cache.apis.dialects import CHAT, MESSAGES, RESPONSES, Dialect
from scout_diff_cache.context.conversations import insertion_point
from scout_diff_cache.encoding import encode_json
from scout_diff_cache.server import reload
from scout_diff_cache.systemd import Notifier
from scout_diff_cache.upstream.tokens import Count, UpstreamTokens
from scout_diff_cache.usage import SseUsage

from support import FakeUpstream, GitRepo, ProxyFactory, UpstreamFactory, proxy_config

DIALECTS: dict[str, Dialect] = {"chat": CHAT, "responses": RESPONSES, "messages": MESSAGES}


@pytest.mark.parametrize(
    ("api", "usage", "injected", "told"),
    [
        (
            "chat",
            {
                "prompt_tokens": 1000,
                "completion_tokens": 5,
                "total_tokens": 1005,
                "prompt_tokens_details": {"cached_tokens": 990},
            },
            900,
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "total_tokens": 105,
                "prompt_tokens_details": {"cached_tokens": 90},
            },
        ),
        (
            "chat",  # the snapshot not cached yet: nothing cached is left to report
            {"prompt_tokens": 1000, "total_tokens": 1001, "prompt_tokens_details": {"cached_tokens": 10}},
            900,
            {"prompt_tokens": 100, "total_tokens": 101, "prompt_tokens_details": {"cached_tokens": 0}},
        ),
        (
            "responses",  # more injected than counted (an estimate past the figure): zero, never negative
            {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 50}, "output_tokens": 2, "total_tokens": 52},
            80,
            {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2, "total_tokens": 2},
        ),
        (
            "messages",  # Anthropic's input_tokens exclude cache reads: those go first
            {"input_tokens": 30, "cache_read_input_tokens": 970, "output_tokens": 4},
            900,
            {"input_tokens": 30, "cache_read_input_tokens": 70, "output_tokens": 4},
        ),
        (
            "messages",  # a cold prefix: the cache writes, then the uncached input
            {"input_tokens": 600, "cache_creation_input_tokens": 400, "cache_read_input_tokens": 0},
            900,
            {"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        ),
        ("messages", {"output_tokens": 7}, 900, {"output_tokens": 7}),  # message_delta: nothing to take
    ],
)
def test_take_out(api: str, usage: dict[str, Any], injected: int, told: dict[str, Any]) -> None:
    DIALECTS[api].take_out(usage, injected)
    assert usage == told


def test_read_usage_counts_every_prompt_token_on_each_api() -> None:
    assert MESSAGES.read_usage({"usage": {"input_tokens": 3, "cache_read_input_tokens": 97}}).prompt_tokens == 100  # type: ignore[union-attr]
    found = RESPONSES.read_usage(
        {"response": {"usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 8}}}}
    )
    assert found is not None and (found.prompt_tokens, found.cached_tokens) == (9, 8)
    assert CHAT.read_usage({"choices": []}) is None


def test_a_stream_is_passed_through_untouched_unless_usage_is_rewritten() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 995}}}
    stream = (
        b"event: message_start\ndata: " + json.dumps(start).encode() + b'\n\nevent: ping\ndata: {"type": "ping"}\n\n'
    )
    untouched = SseUsage(MESSAGES)
    assert untouched.feed(stream[:30]) + untouched.feed(stream[30:]) + untouched.flush() == stream
    assert untouched.usage is not None and untouched.usage.prompt_tokens == 1000
    rewriting = SseUsage(MESSAGES, injected=990)
    out = rewriting.feed(stream[:30]) + rewriting.feed(stream[30:]) + rewriting.flush()
    first, ping = out.split(b"\n\n")[:2]
    assert first.startswith(b"event: message_start\ndata: ") and ping == b'event: ping\ndata: {"type": "ping"}'
    assert json.loads(first.split(b"data: ")[1])["message"]["usage"] == {
        "input_tokens": 5,
        "cache_read_input_tokens": 5,
    }
    assert rewriting.usage is not None and rewriting.usage.prompt_tokens == 1000  # accounting keeps the upstream's


def test_injected_tokens_are_exact_for_the_measured_text_and_scaled_for_the_rest() -> None:
    tokens = UpstreamTokens()
    assert tokens.count("a", 1000) is None
    tokens.learn("a", 4000, 1000)
    assert tokens.count("a", 4000) == 1000 and tokens.count("a", 4400) == 1100
    assert tokens.count("b", 2000) == 500  # an epoch never measured: the latest rate
    assert Count(10, 100).estimate(0) == 0


def test_insertion_points_for_each_placement() -> None:
    question = ("system", "user", "assistant", "user")
    results = ("user", "assistant+tools", "tool")
    assert insertion_point(question, 2) == (3, "before")
    assert insertion_point(question, 2, "user") == insertion_point(question, 2, "attached") == (3, "open")
    assert insertion_point(results, 1) == (3, "before")
    assert insertion_point(results, 1, "user") is None
    assert insertion_point(results, 1, "attached") == (2, "close")
    assert insertion_point(results, 3, "attached") is None  # the upstream saw those results already


def test_a_change_attached_to_a_message_on_each_api() -> None:
    listed = encode_json({"role": "user", "content": [{"type": "input_text", "text": "Q"}]})
    assert json.loads(RESPONSES.opened(listed, b"C\\n"))["content"] == [
        {"type": "input_text", "text": "C\n"},
        {"type": "input_text", "text": "Q"},
    ]
    assert json.loads(CHAT.opened(encode_json({"role": "user", "content": "Q"}), b"C\\n")) == {
        "role": "user",
        "content": "C\nQ",
    }
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": "t", "content": "out"}
    closed = json.loads(MESSAGES.closed(encode_json({"role": "user", "content": [result]}), b"C"))
    assert closed["content"] == [{**result, "content": "out\n\nC"}]
    blocks = {"role": "user", "content": [{**result, "content": [{"type": "text", "text": "out"}]}]}
    closed = json.loads(MESSAGES.closed(encode_json(blocks), b"C"))
    assert closed["content"][0]["content"] == [{"type": "text", "text": "out"}, {"type": "text", "text": "\n\nC"}]


def counting_per(bytes_per_token: dict[str, int]) -> Any:
    """A chat upstream whose usage counts a token per so many bytes of body, by the model asked for."""

    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        raw = await request.read()
        prompt = len(raw) // bytes_per_token[json.loads(raw)["model"]]
        usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
        return web.json_response({"choices": [], "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 0}}})

    return behaviour


async def told_prompt_tokens(client: TestClient) -> int:
    response = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Where is main?"}]}
    )  # the configured model
    assert response.status == 200, await response.text()
    return int((await response.json())["usage"]["prompt_tokens"])


@pytest.mark.parametrize("changed", ["model", "url"])
async def test_a_reload_to_another_upstream_or_model_measures_the_injected_tokens_again(
    changed: str,
    tmp_path: Path,
    git_repo: GitRepo,
    make_proxy: ProxyFactory,
    make_upstream: UpstreamFactory,
    upstream: FakeUpstream,
) -> None:
    """Counts learned from one model's tokenizer are not taken out of another's usage."""
    other = await make_upstream()
    upstream.behaviour = counting_per({"small": 4, "large": 1})
    other.behaviour = counting_per({"small": 1, "large": 1})
    client = await make_proxy(upstream={"model": "small"}, context={"usage": "client"})
    await told_prompt_tokens(client)  # the injected context measured on the first upstream and model
    url = other.url if changed == "url" else upstream.url
    sections = {"upstream": {"model": "large" if changed == "model" else "small"}, "context": {"usage": "client"}}
    proxy_config(tmp_path, git_repo, url, **sections)  # the config file the proxy re-reads
    await reload(client.app, Notifier(None))
    after_reload = await told_prompt_tokens(client)
    fresh = await make_proxy(url=url, **sections)
    assert after_reload == await told_prompt_tokens(fresh)  # what a proxy started on that upstream tells
