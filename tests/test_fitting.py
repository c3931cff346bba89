"""Fitting the snapshot to the upstream's window: the split of the window, the stable choice of
files, their ranks, and the proxy leaving files out over the window of a fake llama.cpp (its
/props and /tokenize), with what the upstream received parsed and checked against the repository."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pygit2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from scout_diff_cache.config import DEFAULT_PRIORITIES
from scout_diff_cache.context.policy import window_limit
from scout_diff_cache.context.selection import FILL, TAKE_BACK, Candidate, select
from scout_diff_cache.context.split import split
from scout_diff_cache.git.priority import ranks
from scout_diff_cache.git.repository import ContentRules
from scout_diff_cache.git.snapshot import build_snapshot
from scout_diff_cache.patterns import compile_patterns
from scout_diff_cache.upstream.counting import tokens_in

from reconstruction import check, parse_snapshot
from support import (
    Behaviour,
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    UpstreamFactory,
    chat,
    completion,
    event_stream,
    free_port,
    injected,
    run_cli,
    snapshot_ready,
    stream_events,
    until_async,
    write_config,
)

# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "answer", "conversation", "diff", "snapshot"),
    [
        (16_384, 2_048, 4_096, 2_048, 8_192),
        (131_072, 16_384, 32_768, 16_384, 65_536),
        (1_048_576, 32_768, 262_144, 131_072, 622_592),
        (10_485_760, 32_768, 262_144, 262_144, 9_928_704),
    ],
)
def test_the_default_split_of_common_windows(
    window: int, answer: int, conversation: int, diff: int, snapshot: int
) -> None:
    parts = split(window)
    assert (parts.answer, parts.conversation, parts.diff, parts.snapshot) == (answer, conversation, diff, snapshot)
    assert parts.answer + parts.conversation + parts.diff + parts.snapshot == window
    assert parts.client == answer + conversation


def test_parts_set_in_tokens_win_and_the_snapshot_gets_the_rest() -> None:
    parts = split(100_000, answer=1_000, conversation=20_000, diff=4_000)
    assert (parts.answer, parts.conversation, parts.diff, parts.snapshot) == (1_000, 20_000, 4_000, 75_000)
    assert split(8_000, conversation=10_000).snapshot == 0  # nothing left: never negative


# --- the choice --------------------------------------------------------------------------------


def files(*specs: tuple[str, int, int]) -> list[Candidate]:
    return [Candidate(path, rank, tokens, listed=5) for path, rank, tokens in specs]


BASE = files(("src/a.py", 0, 300), ("src/b.py", 0, 300), ("README.md", 1, 200), ("tests/t.py", 2, 400))


def test_everything_that_fits_is_inlined() -> None:
    assert select(BASE, 1_200) == frozenset()
    assert select(BASE, 1_200, frozenset()) == frozenset()


def test_a_first_choice_takes_the_most_important_first() -> None:
    assert select(BASE, 1_000) == {"tests/t.py"}  # 800 of 950 (FILL)
    assert select(BASE, 700) == {"README.md", "tests/t.py"}
    # what does not fit is skipped, what fits after it is still taken
    assert select(files(("a", 0, 100), ("big", 1, 900), ("small", 2, 100)), 500) == {"big"}


def test_an_unrelated_change_never_changes_the_choice() -> None:
    first = select(BASE, 1_000)
    grown = files(("src/a.py", 0, 340), ("src/b.py", 0, 300), ("README.md", 1, 200), ("tests/t.py", 2, 400))
    shrunk = files(("src/a.py", 0, 260), ("src/b.py", 0, 300), ("README.md", 1, 200), ("tests/t.py", 2, 400))
    added = [*BASE, Candidate("src/c.py", 0, 40, 5)]
    for changed in (grown, shrunk, added):
        assert select(changed, 1_000, first) == first, changed
    # a small file deleted: less room freed than the twentieth of the budget a take-back needs
    assert select(BASE, 1_000, select(added, 1_000)) == select(added, 1_000)


def test_the_least_important_go_first_when_the_rest_no_longer_fits() -> None:
    first = select(BASE, 1_000)
    grown = files(("src/a.py", 0, 500), ("src/b.py", 0, 300), ("README.md", 1, 200), ("tests/t.py", 2, 400))
    assert select(grown, 1_000, first) == {"README.md", "tests/t.py"}


def test_a_file_comes_back_only_with_room_to_spare() -> None:
    first = select(BASE, 1_000)
    assert first == {"tests/t.py"}
    shrunk = files(("src/a.py", 0, 300), ("src/b.py", 0, 300), ("README.md", 1, 200), ("tests/t.py", 2, 150))
    assert select(shrunk, 1_000, first) == {"tests/t.py"}  # 950 would fit, but not under TAKE_BACK
    smaller = files(("src/a.py", 0, 300), ("src/b.py", 0, 300), ("README.md", 1, 200), ("tests/t.py", 2, 90))
    assert select(smaller, 1_000, first) == frozenset()  # 890: under TAKE_BACK
    assert select(BASE[:1] + BASE[2:], 1_000, first) == frozenset()  # src/b.py deleted: room for it
    assert FILL > TAKE_BACK


def test_the_choice_depends_on_nothing_but_its_inputs() -> None:
    assert select(list(reversed(BASE)), 1_000) == select(BASE, 1_000)


# --- ranks -------------------------------------------------------------------------------------


def test_ranks_follow_the_patterns_and_the_linguist_marks(git_repo: GitRepo) -> None:
    git_repo.write(
        ".gitattributes",
        "gen/** linguist-generated -linguist-vendored\nthird/*.js linguist-vendored\n*.js linguist-generated\n"
        "keep.js -linguist-generated\n",
    )
    git_repo.write(
        "third/.gitattributes", "lib.js -linguist-vendored\nold.js !linguist-vendored linguist-generated=false\n"
    )
    git_repo.write("third/old.js", "x\n")
    for name in ("gen/api.py", "third/lib.js", "keep.js", "src/x.py", "docs/guide.md", "tests/test_x.py", "data.json"):
        git_repo.write(name, "x\n")
    commit = git_repo.commit("files of every kind")
    got = ranks(
        git_repo.path,
        commit,
        [
            "gen/api.py",
            "third/lib.js",
            "keep.js",
            "src/x.py",
            "docs/guide.md",
            "tests/test_x.py",
            "data.json",
            "yarn.lock",
        ],
        DEFAULT_PRIORITIES,
    )
    last = len(DEFAULT_PRIORITIES) + 1
    assert got["gen/api.py"] == got["third/lib.js"] == last  # lib.js: generated (*.js), though not vendored
    assert got["keep.js"] == got["src/x.py"] == 0
    assert 0 < got["docs/guide.md"] < got["tests/test_x.py"] < got["data.json"] < got["yarn.lock"] < last
    assert ranks(git_repo.path, commit, ["src/x.py", "README.md"], ("*.md",)) == {"README.md": 0, "src/x.py": 1}
    assert ranks(git_repo.path, commit, ["third/old.js"], ("**",)) == {"third/old.js": 0}  # the deeper file unset it


# --- through the proxy -------------------------------------------------------------------------


def llama_props(n_ctx: int) -> dict[str, Any]:
    return {"default_generation_settings": {"n_ctx": n_ctx}, "total_slots": 1}


def a_large_repository(repo: GitRepo) -> None:
    """Source, docs and tests of about 2 KiB each: 40 files, far more than a 4k-token snapshot."""
    for number in range(16):
        repo.write(
            f"src/module_{number:02}.py", "".join(f"def f{number}_{line}():\n    return {line}\n" for line in range(60))
        )
    for number in range(12):
        repo.write(f"docs/page_{number:02}.md", "".join(f"Paragraph {line} of page {number}.\n" for line in range(80)))
    for number in range(12):
        repo.write(f"tests/test_{number:02}.py", "".join(f"assert f({line}) == {line}\n" for line in range(90)))
    repo.commit("a large repository")


def four_bytes_a_token(text: str) -> int:
    return max(1, len(text.encode("utf-8")) // 4)


async def fitted_proxy(upstream: FakeUpstream, make_proxy: ProxyFactory, n_ctx: int) -> TestClient:
    """A proxy in front of a llama.cpp-like upstream of `n_ctx` tokens that counts 4 bytes a token,
    once its first snapshot is fitted."""
    upstream.about["GET /props"] = llama_props(n_ctx)
    upstream.tokenizer = four_bytes_a_token
    client = await make_proxy()
    await snapshot_ready(client)
    return client


async def test_the_snapshot_leaves_out_what_the_window_has_no_room_for(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a_large_repository(git_repo)
    client = await fitted_proxy(upstream, make_proxy, 16_384)  # 8,192 tokens for the snapshot
    health = await (await client.get("/health")).json()
    assert health["window"]["split"]["snapshot"] == 8_192
    snapshot_text, diff_text = await injected(client, upstream)
    parsed = parse_snapshot(snapshot_text)
    over = {path for path, reason in parsed.not_included.items() if reason == "over the window"}
    assert over and all(path.startswith(("tests/", "docs/")) for path in over)
    assert all(path in parsed.files for path in (f"src/module_{number:02}.py" for number in range(16)))
    assert four_bytes_a_token(snapshot_text) <= 8_192
    assert health["snapshot"]["tokens"] <= 8_192 and health["snapshot"]["over_window"] == len(over)
    check(snapshot_text, diff_text, git_repo.path)  # what is inlined is exact; the rest is named
    counted = len(upstream.tokenized)
    assert counted == len(parsed.files) + len(over) + 1  # every file once, and the header

    # an unrelated commit and a rebase: the same files left out, only the changed file counted again
    git_repo.write("src/module_03.py", git_repo.path.joinpath("src/module_03.py").read_text() + "# one more line\n")
    git_repo.commit("an unrelated change")
    with caplog.at_level(logging.INFO, "scout_diff_cache"):
        assert (await client.post("/admin/rebase")).status == 200  # warmed up before the switch
    assert "confirms the fit: 100 of 10240 prompt tokens" in caplog.text  # the fake counts 100
    after, diff_after = await injected(client, upstream)
    assert {path for path, reason in parse_snapshot(after).not_included.items() if reason == "over the window"} == over
    assert len(upstream.tokenized) == counted + 1
    check(after, diff_after, git_repo.path)


async def test_an_edit_to_a_file_left_out_stays_out_of_the_diff(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    a_large_repository(git_repo)
    client = await fitted_proxy(upstream, make_proxy, 16_384)
    snapshot_text, _ = await injected(client, upstream)
    over = sorted(
        path for path, reason in parse_snapshot(snapshot_text).not_included.items() if reason == "over the window"
    )
    git_repo.write(over[0], "edited\n" * 500)
    _, diff_text = await injected(client, upstream)
    assert f"=== file: {over[0]} [modified, contents not shown: not in the snapshot" in diff_text
    assert "edited" not in diff_text


async def test_without_a_tokenizer_the_bytes_are_counted_cautiously(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    a_large_repository(git_repo)
    upstream.about["GET /props"] = llama_props(16_384)  # no /tokenize: 404
    client = await make_proxy()
    await snapshot_ready(client)
    snapshot_text, _ = await injected(client, upstream)
    assert len(snapshot_text.encode("utf-8")) <= 8_192 * 3  # three bytes a token
    assert "over the window: " in snapshot_text


async def test_an_unknown_window_cuts_nothing(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    a_large_repository(git_repo)
    upstream.tokenizer = four_bytes_a_token
    client = await make_proxy()
    await snapshot_ready(client)
    snapshot_text, _ = await injected(client, upstream)
    assert "over the window" not in snapshot_text and not upstream.tokenized
    health = await (await client.get("/health")).json()
    assert health["window"]["split"] is None and health["snapshot"]["tokens"] is None


async def test_models_tell_clients_the_window_left_to_them(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    client = await fitted_proxy(upstream, make_proxy, 131_072)
    health = await (await client.get("/health")).json()
    models = await (await client.get("/v1/models")).json()
    room = 131_072 - health["snapshot"]["tokens"] - health["window"]["split"]["diff"]
    assert (
        models["data"][0]["max_model_len"] == models["data"][0]["context_length"] == room == health["window"]["client"]
    )
    assert models["data"][0]["id"] == "upstream-model"


def test_git_marks_read_from_the_commit_not_the_work_tree(git_repo: GitRepo) -> None:
    git_repo.write(".gitattributes", "*.gen linguist-generated\n")
    git_repo.write("a.gen", "x\n")
    commit = git_repo.commit("marked")
    Path(git_repo.path, ".gitattributes").unlink()
    assert ranks(git_repo.path, commit, ["a.gen"], ("**",)) == {"a.gen": 2}
    assert pygit2.Repository(str(git_repo.path)).head.target == pygit2.Oid(hex=commit)


async def test_a_window_learned_later_refits_the_snapshot_and_a_larger_one_takes_files_back(
    git_repo: GitRepo, make_upstream: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    a_large_repository(git_repo)
    port = free_port()
    client = await make_proxy(url=f"http://127.0.0.1:{port}/v1")
    await snapshot_ready(client)  # built while the upstream is away: not fitted
    assert (await (await client.get("/health")).json())["snapshot"]["tokens"] is None
    small = await make_upstream(port=port)
    small.about["GET /props"] = llama_props(16_384)
    small.tokenizer = four_bytes_a_token
    await until_async(lambda: over_window(client, small), True, timeout=10)
    snapshot_text, _ = await injected(client, small)
    assert "over the window: " in snapshot_text and four_bytes_a_token(snapshot_text) <= 8_192
    assert small.server is not None
    await small.server.close()
    question = chat({"role": "user", "content": "Hi"})
    assert (await client.post("/v1/chat/completions", json=question)).status == 503
    large = await make_upstream(port=port)  # back with a context that holds everything
    large.about["GET /props"] = llama_props(131_072)
    large.tokenizer = four_bytes_a_token
    await until_async(lambda: over_window(client, large), False, timeout=10)
    snapshot_text, diff_text = await injected(client, large)
    assert "over the window" not in snapshot_text
    check(snapshot_text, diff_text, git_repo.path)


async def over_window(client: TestClient, upstream: FakeUpstream) -> bool | None:
    """Whether the snapshot served leaves files out over the window, once it was fitted to the
    window now known (None before); each call is a request, as requests are what notice it."""
    await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Hi"}))
    health = await (await client.get("/health")).json()
    split = health["window"]["split"]
    if split is None or health["snapshot"]["budget"] != split["snapshot"]:
        return None
    return bool(health["snapshot"]["over_window"])


# --- an upstream that cuts prompts silently, as Ollama does --------------------------------------


def ollama_like(loaded: int) -> Behaviour:
    """Ollama's OpenAI-compatible chat: a prompt longer than the loaded context loses its front
    and is answered with 200, its usage counting what was kept (ollama#5902)."""

    async def answer(request: web.Request, upstream: FakeUpstream) -> web.StreamResponse:
        body = await request.json()
        tokens = sum(four_bytes_a_token(str(message.get("content", ""))) for message in body["messages"])
        kept = min(tokens, loaded - 16)
        if not body.get("stream"):
            return web.json_response(completion(prompt=kept))
        response = await event_stream(request)
        for event in stream_events(request.path, kept):
            await response.write(event)
        await response.write_eof()
        return response

    return answer


OLLAMA_PS = {"models": [{"name": "upstream-model", "model": "upstream-model", "context_length": 4096}]}


async def test_fitted_to_the_context_ollama_loaded_nothing_is_cut(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    a_large_repository(git_repo)
    upstream.about["GET /api/ps"] = OLLAMA_PS  # no /props, no /tokenize: counted at 3 bytes a token
    upstream.behaviour = ollama_like(4096)
    client = await make_proxy(upstream={"model": "upstream-model"})
    await snapshot_ready(client)
    response = await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Where is main?"}))
    assert response.status == 200 and "X-Scout-Context-Truncated" not in response.headers
    health = await (await client.get("/health")).json()
    assert health["window"]["tokens"] == 4096 and health["truncation"] is None


async def test_a_prompt_cut_by_the_upstream_is_said_loudly(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a_large_repository(git_repo)
    upstream.behaviour = ollama_like(4096)
    client = await make_proxy(upstream={"context_window": "1000000"})  # more than it loaded
    await snapshot_ready(client)
    question = chat({"role": "user", "content": "Where is main?"})
    response = await client.post("/v1/chat/completions", json=question)
    assert response.status == 200  # the answer is the client's, with a warning on it
    assert "did not read the whole repository" in response.headers["X-Scout-Context-Truncated"]
    streamed = await client.post("/v1/chat/completions", json={**question, "stream": True})
    assert "X-Scout-Context-Truncated" in streamed.headers  # said from what the last answer showed
    await streamed.read()
    health = await (await client.get("/health")).json()
    assert "the upstream cut the prompt" in health["truncation"] and "OLLAMA_CONTEXT_LENGTH" in health["truncation"]
    metrics = await (await client.get("/metrics")).text()
    assert "scout_truncated_prompts_total 0" not in metrics and "scout_truncated_prompts_total" in metrics
    assert sum("the upstream cut the prompt" in record.message for record in caplog.records) == 1  # once while it lasts
    assert "Where is main" not in caplog.text


async def test_a_diff_past_its_part_of_the_window_moves_the_snapshot_on(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    """Commits grow the diff; past its part of the window (2,048 tokens of 16k) the snapshot moves
    to HEAD, though the diff is far under the byte budget (256 KiB)."""
    client = await fitted_proxy(upstream, make_proxy, 16_384)
    first = (await (await client.get("/health")).json())["snapshot"]["commit"]
    git_repo.write("src/small.py", "x = 1\n" * 100)  # 600 bytes: 150 tokens
    git_repo.commit("a small change")
    await injected(client, upstream)
    assert (await (await client.get("/health")).json())["snapshot"]["commit"] == first
    git_repo.write("src/large.py", "y = 2\n" * 2_000)  # 12 KB: 3,000 tokens
    head = git_repo.commit("a large change")
    await injected(client, upstream)
    await until_async(health_commit(client), head)


def health_commit(client: TestClient) -> Callable[[], Awaitable[str]]:
    async def commit() -> str:
        return str((await (await client.get("/health")).json())["snapshot"]["commit"])

    return commit


def test_the_diff_limit_is_its_part_of_the_window_at_the_snapshot_s_bytes_per_token(git_repo: GitRepo) -> None:
    snapshot = build_snapshot(
        git_repo.path, git_repo.head(), ContentRules(compile_patterns(()), 1 << 20), 1 << 20, None
    )
    assert window_limit(snapshot) == 0  # not fitted: no part of a window
    fitted = attrs.evolve(snapshot, tokens=snapshot.text_bytes // 4, budget=8_192, diff_budget=2_048)
    assert window_limit(fitted) == pytest.approx(2_048 * snapshot.text_bytes / (snapshot.text_bytes // 4))
    assert window_limit(attrs.evolve(fitted, tokens=None)) == 2_048 * 3  # estimated: cautiously


async def test_a_prompt_the_proxy_can_tell_is_too_long_is_refused_without_sending(
    git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    client = await fitted_proxy(upstream, make_proxy, 16_384)
    long = [{"role": "user", "content": "word " * 30_000}]  # 150 KB: about 37k tokens
    chat_answer = await client.post("/v1/chat/completions", json=chat(*long))
    assert chat_answer.status == 400
    error = (await chat_answer.json())["error"]
    assert error["code"] == "context_length_exceeded" and "maximum context length is 16384" in error["message"]
    messages_answer = await client.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": long})
    assert messages_answer.status == 400
    refusal = (await messages_answer.json())["error"]
    assert refusal["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 16384 maximum", refusal["message"]), refusal
    assert upstream.asked == []  # nothing went upstream
    fits = [{"role": "user", "content": "word " * 8_000}]  # about 10k tokens: sent, the upstream decides
    assert (await client.post("/v1/chat/completions", json=chat(*fits))).status == 200
    assert len(upstream.asked) == 1


async def test_inspect_prints_the_split_the_fit_and_the_client_s_room(
    tmp_path: Path, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    a_large_repository(git_repo)
    upstream.about["GET /props"] = llama_props(16_384)
    upstream.tokenizer = four_bytes_a_token
    sections = {"repository": {"path": str(git_repo.path)}, "upstream": {"url": upstream.url}}
    path = write_config(tmp_path, {**sections, "context": {"state_dir": str(tmp_path / "state"), "layout": "separate"}})
    done = await asyncio.to_thread(run_cli, "--config", str(path), "inspect")
    assert done.returncode == 0, done.stderr
    assert "split        snapshot 8,192, diff 2,048, conversation 4,096, answer 2,048 tokens" in done.stdout
    fitted = re.search(
        r"fitted       snapshot ([\d,]+) tokens, counted by the upstream; (\d+) files left out", done.stdout
    )
    assert fitted is not None and int(fitted[1].replace(",", "")) <= 8_192 and int(fitted[2]) > 0, done.stdout
    room = re.search(r"client room  ([\d,]+) tokens", done.stdout)
    assert room is not None and int(room[1].replace(",", "")) == 16_384 - int(fitted[1].replace(",", "")) - 2_048
    assert "over the window" in done.stdout  # each file left out, in the list of what is left out
    shown = await asyncio.to_thread(run_cli, "--config", str(path), "inspect", "--show", "snapshot")
    assert shown.returncode == 0 and "over the window: " in shown.stdout


async def test_a_restart_keeps_the_choice_the_epochs_before_it_made(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    """A choice kept across a commit can differ from the one a fresh start would make: the state
    file keeps it, so a restarted proxy renders the same snapshot (and the upstream's cache holds)."""
    upstream.about["GET /props"] = llama_props(16_384)  # 8,192 snapshot tokens
    upstream.tokenizer = four_bytes_a_token
    line = "a" * 39 + "\n"
    git_repo.write("src/a.py", line * 400)  # 4,000 tokens
    git_repo.write("src/b.py", line * 280)  # 2,800
    git_repo.write("docs/x.md", line * 120)  # 1,200: left out by a first choice
    git_repo.commit("three large files")
    client = await make_proxy()
    await snapshot_ready(client)
    assert "over the window: docs/x.md" in (await injected(client, upstream))[0]
    git_repo.write("src/b.py", line * 210)  # 700 tokens less: a first choice would take docs/x.md back
    git_repo.commit("a smaller file")
    assert (await client.post("/admin/rebase")).status == 200
    assert "over the window: docs/x.md" in (await injected(client, upstream))[0]  # the choice kept
    restarted = await make_proxy()
    await snapshot_ready(restarted)
    assert "over the window: docs/x.md" in (await injected(restarted, upstream))[0]
    fresh = await make_proxy(context={"state_dir": str(tmp_path / "elsewhere")})
    await snapshot_ready(fresh)
    assert "over the window" not in (await injected(fresh, upstream))[0]  # what a first choice makes


@pytest.mark.parametrize(
    ("answer", "count"),
    [
        (b'{"tokens":[2,105,2364]}', 3),  # llama.cpp
        (b'{"tokens": [ ]}', 0),
        (b'{"tokens":[' + b",".join([b"7"] * 100_000) + b"]}", 100_000),  # counted by its commas
        (b'{"count":3,"max_model_len":8192,"tokens":[2,105,2364],"token_strs":null}', 3),  # vLLM
        (b'{"tokens":[{"id":2,"piece":"a"},{"id":3,"piece":"b"}]}', 2),  # with pieces: parsed
        (b'{"error":"no"}', None),
        (b"not json", None),
    ],
)
def test_a_tokenize_answer_is_counted_without_parsing_its_ids(answer: bytes, count: int | None) -> None:
    assert tokens_in(answer) == count
