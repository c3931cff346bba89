"""The status page and its JSON, the diagnosis in the log line, /health and the metrics, the
warm-up's progress, and `python -m scout_diff_cache status`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_access import REMOTE, keys_file, seen_as_from
from test_diagnosis import BILLING, SYSTEM

from scout_diff_cache.__main__ import main
from scout_diff_cache.app import make_app
from scout_diff_cache.status import render_text, warmup_line
from scout_diff_cache.upstream.progress import Prefill
from scout_diff_cache.usage import Usage
from scout_diff_cache.warming import WarmUps

from support import (
    FakeUpstream,
    GitRepo,
    PrefixCache,
    ProxyFactory,
    answer_json,
    event_stream,
    free_port,
    is_warmup,
    proxy_config,
    snapshot_ready,
    until_async,
)

KEEP_BILLING = {"billing_header": "keep"}


def claude_code(nonce: str, question: str) -> dict[str, Any]:
    """A Messages request as Claude Code sends it: the billing line with its nonce as system[0]."""
    system = [{"type": "text", "text": BILLING.format(nonce)}, {"type": "text", "text": SYSTEM}]
    return {"model": "scout", "max_tokens": 10, "system": system, "messages": [{"role": "user", "content": question}]}


async def two_conversations(client: TestClient, headers: dict[str, str] | None = None) -> None:
    """Two Claude Code conversations whose nonces differ: the second breaks in system[0]."""
    for nonce, question in (("ed9", "Where is main?"), ("3f1", "What does util do?")):
        answer = await client.post("/v1/messages", json=claude_code(nonce, question), headers=headers)
        assert answer.status == 200, await answer.text()


async def test_a_break_is_in_the_log_line_health_and_the_metrics(
    make_proxy: ProxyFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.behaviour = PrefixCache()
    caplog.set_level(logging.INFO, "scout_diff_cache")
    client = await make_proxy(context=KEEP_BILLING)
    await snapshot_ready(client)
    await two_conversations(client)
    prefix = (await (await client.get("/health")).json())["prefix"]

    assert prefix["breaks"] == {"system": 1}
    last = prefix["last"]
    assert (last["cause"], last["broke"], last["element"], last["region"]) == (
        "changed",
        "system",
        "system[0]",
        "system",
    )
    assert "before" not in last and "now" not in last  # /health is open: no contents there
    assert last["split"]["recomputed"] > 0 and last["split"]["cached"] > 0
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prefix_breaks_total{region="system"} 1' in metrics
    lines = [record.message for record in caplog.records if "POST /v1/messages" in record.message]
    assert "prefix=new" in lines[0] or "prefix=hit" in lines[0]
    assert re.search(r"prefix=changed cached_to=system break=system differs=system\[0\]@\d+", lines[1])
    assert "3f1" not in "".join(record.message for record in caplog.records)  # never contents in the log


async def test_the_page_shows_the_figures_without_javascript(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.behaviour = PrefixCache()
    client = await make_proxy(context=KEEP_BILLING)
    await snapshot_ready(client)
    await two_conversations(client)
    figures = await (await client.get("/status.json")).json()
    health = await (await client.get("/health")).json()
    assert figures["snapshot"]["commit"] == health["snapshot"]["commit"]
    assert figures["snapshot"]["bytes"] == health["snapshot"]["bytes"]
    assert [record["cause"] for record in figures["requests"]][-1] == "changed"
    assert figures["clients"]["anyone"]["requests"] == 2 and figures["clients"]["anyone"]["conversations"] == 2
    page = await client.get("/status")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert health["snapshot"]["commit"] in html
    assert f"{health['snapshot']['bytes']:,} bytes" in html
    assert html.count('class="recomputed"') == 2 and '<svg id="chart"' in html
    assert "system[0] differs from this client&#x27;s previous request (" in html
    assert "3f1" in html  # the few bytes around the break, on the admin page only


async def test_the_page_is_for_admins_and_names_keys_never_shows_them(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, aiohttp_client: Any
) -> None:
    upstream.behaviour = PrefixCache()
    remote = make_app(proxy_config(tmp_path, git_repo, upstream.url))
    remote.middlewares.insert(0, seen_as_from(REMOTE))
    refused = await aiohttp_client(remote)
    assert (await refused.get("/status")).status == 403
    assert (await refused.get("/status.json")).status == 403
    (tmp_path / "keyed").mkdir()
    sections = {"server": {"api_keys_file": keys_file(tmp_path, "first-secret-key", "second-secret-key")}}
    keyed_app = make_app(proxy_config(tmp_path / "keyed", git_repo, upstream.url, context=KEEP_BILLING, **sections))
    keyed_app.middlewares.insert(0, seen_as_from(REMOTE))
    keyed = await aiohttp_client(keyed_app)
    assert (await keyed.get("/status")).status == 401
    await two_conversations(keyed, {"x-api-key": "second-secret-key"})
    html = await (await keyed.get("/status", headers={"Authorization": "Bearer first-secret-key"})).text()
    assert "key 2" in html and "secret-key" not in html


async def test_a_warm_up_under_way_is_on_the_page(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    async def slow_warm_ups(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        if is_warmup(json.loads(await request.read())):
            await fake.release.wait()
        return await answer_json(request, fake)

    upstream.behaviour = slow_warm_ups
    client = await make_proxy(context={"rebase": "manual"})
    await snapshot_ready(client)
    git_repo.write("src/new.py", "def new():\n    return 1\n")
    git_repo.commit("a new module")
    rebase = asyncio.ensure_future(client.post("/admin/rebase"))
    await until_async(lambda: figure(client, "warmup", "state"), "running")
    html = await (await client.get("/status")).text()
    assert "<dt>prefilling</dt>" in html and '<dt>state</dt><dd data-figure="warmup.state">running</dd>' in html
    upstream.release.set()
    assert (await rebase).status == 200
    await until_async(lambda: figure(client, "warmup", "state"), "idle")
    assert (await figure(client, "epochs", "rebases")) == 1


async def figure(client: TestClient, *path: str) -> Any:
    """One figure of /status.json."""
    found = await (await client.get("/status.json")).json()
    for key in path:
        found = found[key]
    return found


def test_a_warm_up_shows_its_progress_from_the_rate_of_earlier_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("scout_diff_cache.warming.time.monotonic", lambda: clock[0])
    warmups = WarmUps()
    from scout_diff_cache.diagnosis import Prompt

    started = warmups.begin(Prompt(()), 4000)
    assert warmups.progress() is not None and warmups.progress().rate is None  # type: ignore[union-attr]
    clock[0] += 10
    warmups.end(started, Usage(4000, 0, 4000))  # 400 tokens a second
    started = warmups.begin(Prompt(()), 8000)
    clock[0] += 5
    progress = warmups.progress()
    assert progress is not None and progress.rate == 400 and progress.done == 0.25 and progress.left == 15
    warmups.end(started, Usage(8000, 8000, 1))  # all cached: says nothing of the rate
    assert list(warmups.rates) == [400] and warmups.progress() is None
    measured = progress.source
    running = {"state": "running", "rate": 400, "tokens": 8000, "elapsed": 5, "done": 0.25, "left": 15}
    assert warmup_line({**running, "measured": measured}) == (
        "warm-up     [########----------------------] 25% ~15s left of ~8,000 tokens "
        "(at earlier warm-ups' rate; 400 tokens/s)"
    )
    started = warmups.begin(Prompt(()), 3000)
    warmups.report(started, Prefill(total=3000, cache=1000, processed=1500, seconds=2.0))  # llama.cpp's own
    reported = warmups.progress()
    assert reported is not None and reported.tokens == 2000 and reported.done == 0.25 and reported.left == 6.0
    assert reported.source == "as the upstream reports it"
    warmups.report(started - 1, Prefill(3000, 0, 3000, 1.0))  # another warm-up's: not this one's
    assert warmups.progress() == reported


async def test_a_warm_up_shows_the_progress_llama_cpp_reports(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    """llama.cpp streams a warm-up's `prompt_progress` when asked: the page shows its figures."""

    async def reporting_warm_ups(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not (is_warmup(body) and body.get("stream") and body.get("return_progress")):
            return await answer_json(request, fake)
        response = await event_stream(request)
        for processed, milliseconds in ((0, 0), (1500, 3000)):
            progress = {"total": 3500, "cache": 500, "processed": processed, "time_ms": milliseconds}
            await response.write(
                b"data: " + json.dumps({"choices": [], "prompt_progress": progress}).encode() + b"\n\n"
            )
        await fake.release.wait()
        await asyncio.sleep(1.5)  # a batch longer than idle_timeout: a prefill's gaps have first_byte_timeout
        usage = {"prompt_tokens": 3500, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 500}}
        await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n")
        return response

    upstream.behaviour = reporting_warm_ups
    upstream.about["GET /props"] = {"default_generation_settings": {"n_ctx": 65536}, "total_slots": 1}
    client = await make_proxy(context={"rebase": "manual"}, upstream={"idle_timeout": "1s"})
    await snapshot_ready(client)
    git_repo.write("src/new.py", "def new():\n    return 1\n")
    git_repo.commit("a new module")
    rebase = asyncio.ensure_future(client.post("/admin/rebase"))
    await until_async(lambda: figure(client, "warmup", "state"), "running")
    await until_async(lambda: figure(client, "warmup", "measured"), "as the upstream reports it")
    warmup = await figure(client, "warmup")
    assert warmup["done"] == 1000 / 3000 and warmup["left"] == 6.0 and warmup["tokens"] == 3000  # 2,000 at 1,000 in 3 s
    assert "33%, ~6s left (as the upstream reports it)" in await (await client.get("/status")).text()
    upstream.release.set()
    done = await (await rebase).json()
    assert done["warmup"]["prompt_tokens"] == 3500 and done["warmup"]["cached_tokens"] == 500  # from the stream


async def test_the_status_command_prints_what_the_proxy_shows(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    upstream.behaviour = PrefixCache()
    port = free_port()
    config = proxy_config(tmp_path, git_repo, upstream.url, server={"port": str(port)}, context=KEEP_BILLING)
    server = await aiohttp_server(make_app(config), host="127.0.0.1", port=port)
    client = await aiohttp_client(server)
    await snapshot_ready(client)
    await two_conversations(client)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = await asyncio.to_thread(main, ["status", "--config", str(config.source)])
    assert code == 0
    figures = await (await client.get("/status.json")).json()
    assert printed.getvalue() == render_text(figures)
    assert "system[0] differs from this client's previous request (" in printed.getvalue()
    assert "prefix breaks  system prompt and tools: 1" in printed.getvalue()
