"""The status page in a real headless Chromium (`make browser`): loaded from a running proxy in
front of a fake upstream that keeps a prefix cache, after requests that break the prefix in each
region; the chart drawn, the figures the same as /health's, a new request shown without a reload,
the same page with JavaScript off, and a screenshot ($SCOUT_STATUS_SCREENSHOT, else a temporary
file) that the README shows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_access import keys_file
from test_status import KEEP_BILLING, claude_code

from scout_diff_cache.app import make_app
from scout_diff_cache.diagnosis import REGIONS

from browser import CHROMIUM, Browser
from support import GitRepo, PrefixCache, chat, proxy_config, snapshot_ready

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make browser installs it)"),
]

AGENT, CLAUDE = {"Authorization": "Bearer agent-key"}, {"x-api-key": "claude-key"}
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}} for name in ("read", "edit")
]
FIGURES = (
    "Object.fromEntries([...document.querySelectorAll('[data-figure]')].map(e => [e.dataset.figure, e.textContent]))"
)


async def ask(
    client: TestClient, body: dict[str, Any], headers: dict[str, str], path: str = "/v1/chat/completions"
) -> None:
    answer = await client.post(path, json=body, headers=headers)
    assert answer.status == 200, await answer.text()


def turns(*questions: str) -> list[dict[str, str]]:
    """A conversation of `questions`, each answered "ok" but the last."""
    found: list[dict[str, str]] = []
    for question in questions:
        found += [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]
    return found[:-1]


async def a_working_day(client: TestClient, cache: PrefixCache, git_repo: GitRepo) -> int:
    """Requests whose prefixes hold, break in each region, and go cold; a rebase among them. How many."""
    system = {"role": "system", "content": "You are a careful coding agent."}
    for count in (1, 2, 3):  # a growing conversation: cached as expected
        await ask(client, chat(system, *turns(*[f"step {n}" for n in range(count)])), AGENT)
    await ask(client, claude_code("ed9", "Where is main?"), CLAUDE, "/v1/messages")
    await ask(client, claude_code("3f1", "What does util do?"), CLAUDE, "/v1/messages")  # system[0]'s nonce
    await ask(client, chat(system, *turns("list the files"), tools=TOOLS), AGENT)
    await ask(client, chat(system, *turns("list the files", "now edit"), tools=TOOLS[::-1]), AGENT)  # tools reordered
    await ask(client, chat(system, *turns("step 0 (edited)", "step 1", "step 2", "step 3")), AGENT)  # history edited
    git_repo.write("src/new.py", "def new():\n    return 1\n")
    git_repo.commit("a new module")
    assert (await client.post("/admin/rebase", headers=AGENT)).status == 200
    await ask(client, chat(system, *turns("after the rebase")), AGENT)  # on the warm-up's prefix
    cache.forget()  # the model server restarted
    await ask(client, chat(system, *turns("after the rebase", "and then?")), AGENT)
    return 10


async def test_the_status_page_in_a_real_browser(
    tmp_path: Path, git_repo: GitRepo, make_upstream: Any, aiohttp_client: Any
) -> None:
    upstream = await make_upstream()
    upstream.behaviour = cache = PrefixCache()
    sections = {"server": {"api_keys_file": keys_file(tmp_path, "agent-key", "claude-key")}}
    config = proxy_config(tmp_path, git_repo, upstream.url, context=KEEP_BILLING, **sections)
    client = await aiohttp_client(make_app(config))
    await snapshot_ready(client)
    asked = await a_working_day(client, cache, git_repo)
    url = str(client.make_url("/status"))
    async with Browser(tmp_path / "profile") as browser:
        await browser.send("Network.enable")
        await browser.send("Network.setExtraHTTPHeaders", headers=AGENT)
        await browser.open(url)
        await browser.until(f"document.querySelectorAll('#chart rect').length === {3 * asked}")
        health = await (await client.get("/health")).json()
        figures = await browser.evaluate(FIGURES)
        snapshot = health["snapshot"]
        assert figures["snapshot.commit"] == snapshot["commit"] == git_repo.head()
        assert figures["snapshot.bytes"].startswith(f"{snapshot['bytes']:,} bytes")
        assert figures["snapshot.files"].startswith(f"{snapshot['files']:,} inlined")
        assert (figures["epochs.rebases"], figures["epochs.folds"]) == (
            str(snapshot["rebases"]),
            str(snapshot["folds"]),
        )
        assert figures["window.tokens"].endswith(f"({health['window']['source']})")
        shown = {f"{REGIONS[region]}: {count}" for region, count in health["prefix"]["breaks"].items()}
        assert set(figures["breaks"].split(", ")) == shown
        print(
            [
                (r["client"], r["cause"], r["explanation"], r["split"])
                for r in (await (await client.get("/status.json", headers=AGENT)).json())["requests"]
            ]
        )
        assert {"system prompt and tools: 2", "earlier history: 1"} <= shown
        newest = await browser.evaluate("document.querySelector('#requests tr:nth-child(2)').textContent")
        assert health["prefix"]["last"]["explanation"] in newest and "cold" in newest
        assert await browser.evaluate("document.querySelectorAll('#chart line.rebase').length") == 1
        page = await browser.evaluate("document.documentElement.outerHTML")
        assert "agent-key" not in page and "claude-key" not in page and "key 2" in page

        await ask(client, chat(*turns("one more")), AGENT)  # the script brings it in without a reload
        await browser.until(f"document.querySelectorAll('#chart rect').length === {3 * (asked + 1)}")
        screenshot = Path(os.environ.get("SCOUT_STATUS_SCREENSHOT") or tmp_path / "status.png")
        await browser.screenshot(screenshot)
        print(f"\nthe status page: {screenshot.resolve()}")

        await browser.send("Emulation.setScriptExecutionDisabled", value=True)
        await browser.open(url + "?static")
        assert await browser.evaluate("document.querySelectorAll('#chart rect').length") == 3 * (asked + 1)
        assert (await browser.evaluate(FIGURES))["snapshot.commit"] == snapshot["commit"]
