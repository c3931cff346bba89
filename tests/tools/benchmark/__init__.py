"""`make bench`: what the proxy costs, measured side by side with its physical references in one run.

    python -m tests.tools.benchmark [REPOSITORY] [--requests N]

Without REPOSITORY it generates one the size of the mission (about 40 MB of text, 10M tokens:
files of varied, realistic sizes, a few large ones, a short history). First the snapshot, as the
proxy builds it (worker processes, secrets scanned), beside `git archive` of the same tree; the
longest event-loop stall meanwhile; a rebase from HEAD's first parent reusing sections; the working
diff beside libgit2's own index-assisted diff; memory, in a fresh process. Then it starts a minimal
upstream (reads and discards each body, answers a small completion) and the real proxy, each in its
own process on loopback, and times, for the same upstream body:
  direct   the client POSTs the fully assembled body straight to the upstream (the loopback cost);
  proxy    the client POSTs its small body to the proxy, which injects snapshot and diff;
  naive    json.dumps of that whole body, as a proxy that re-serialises per request would.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pygit2
from aiohttp import web

from scout_diff_cache.apis.chat import parse_chat_request
from scout_diff_cache.apis.dialects import CHAT
from scout_diff_cache.apis.validation import RequestRules
from scout_diff_cache.config import Config, load_config
from scout_diff_cache.context.fitting import fitting_for
from scout_diff_cache.git.diff import FLAGS, WorkingDiff, working_diff
from scout_diff_cache.git.order import HISTORY_WINDOW, changed_paths
from scout_diff_cache.git.reader import RepositoryReader
from scout_diff_cache.git.repository import ContentRules, head_commit, open_repository, opened
from scout_diff_cache.git.sections import render_entries
from scout_diff_cache.git.snapshot import Snapshot, changes_and_key, history
from scout_diff_cache.git.workers import POOL_MIN_ENTRIES, Workers
from scout_diff_cache.runtime import after_build, settle
from scout_diff_cache.upstream.counting import TokenCounter

from support import ProxyProcess, free_port

#: The project root, so that the child processes find `scout_diff_cache` and `tests`.
ROOT = Path(__file__).resolve().parents[2]

#: The mission's scale: 10M tokens of text at about 4 bytes a token.
MISSION_BYTES = 40_000_000

T = TypeVar("T")

STREAM_CHUNKS = 50
CONVERSATIONS = 20
CONCURRENT = 200
QUESTION = {"model": "bench", "messages": [{"role": "user", "content": "Where is the cache invalidated?"}]}
ANSWER = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}).encode()


def generate_repository(path: Path, files: int = 5000, file_bytes: int = 10_000) -> None:
    """Deterministic source-like text of uniform files (same seed, same repository), plus one uncommitted edit."""
    rng = random.Random(42)
    words = ["def", "return", "self", "value", "cache", "snapshot", "import", "class", "for", "in", "if", "None"]
    repo = pygit2.init_repository(str(path), initial_head="main")
    for number in range(files):
        target = path / f"pkg{number % 50:02d}" / f"module{number:04d}.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        lines, size = [], 0
        while size < file_bytes:
            line = "    " + " ".join(rng.choice(words) for _ in range(10)) + "\n"
            lines.append(line)
            size += len(line)
        target.write_text("".join(lines))
    _commit(repo, "generated")
    (path / "pkg00" / "module0000.py").write_text("# an uncommitted edit\n")


#: Extensions and their share of the generated mission-size repository's files.
KINDS = (("py", 30), ("c", 15), ("h", 8), ("js", 12), ("md", 10), ("json", 5), ("yaml", 5), ("txt", 5), ("sh", 3))


def generate_mission_repository(path: Path, target_bytes: int = MISSION_BYTES) -> None:
    """About 40 MB of text (10M tokens) in files of varied sizes (log-normal, median 4 KB, up to 400 KB),
    three large ones (1-2 MB), a few binaries and fake secrets, and a short history whose last commit
    touches three files: deterministic, same seed, same repository; the work tree left clean."""
    rng = random.Random(14)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 12))) for _ in range(3000)]
    extras = ["# see https://example.org/docs/page for details", "token = lookup_key(name)", "    return value"]
    lines = [
        "    " * rng.randint(0, 3) + " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        for _ in range(20_000)
    ] + extras * 50
    folders = [
        "/".join(f"{rng.choice(words)[:8]}{rng.randint(0, 9)}" for _ in range(rng.randint(1, 4))) for _ in range(300)
    ]

    def text(size: int) -> str:
        out, total = [], 0
        while total < size:
            line = rng.choice(lines) + "\n"
            out.append(line)
            total += len(line)
        return "".join(out)

    repo = pygit2.init_repository(str(path), initial_head="main")
    names = [kind for kind, share in KINDS for _ in range(share)]
    written, number, paths = 0, 0, []
    for large in range(3):
        size = 1_000_000 + large * 500_000
        target = path / "data" / f"fixture{large}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text(size))
        written += size
    for number in range(5):
        (path / "assets").mkdir(exist_ok=True)
        (path / "assets" / f"image{number}.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00" + rng.randbytes(20_000))
    (path / "config").mkdir(exist_ok=True)
    (path / "config" / "deploy.yaml").write_text("aws_access_key_id: AKIA" + "Q" * 16 + "\npassword: hunter2hunter2\n")
    while written < target_bytes:
        size = min(400_000, int(rng.lognormvariate(8.3, 1.1)))
        relative = f"{rng.choice(folders)}/{rng.choice(words)}{number}.{rng.choice(names)}"
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text(size))
        paths.append(relative)
        written += size
        number += 1
    _commit(repo, "generated")
    for commit in range(20):
        for relative in rng.sample(paths, 3 if commit == 19 else rng.randint(1, 8)):
            with (path / relative).open("a") as out:
                out.write(text(200))
        _commit(repo, f"change {commit}")
    settle_index(path)


def settle_index(path: Path) -> None:
    """Pack the objects, as a clone's are; and date the files an hour back, recorded in the index, as
    a checkout long ago would (files written in the second the index was are "racily clean": every
    diff would hash them again)."""
    subprocess.run(["git", "-C", str(path), "repack", "-a", "-d", "-q"], check=True)
    subprocess.run(["git", "-C", str(path), "prune-packed", "-q"], check=True)
    past = time.time() - 3600
    for file in path.rglob("*"):
        if file.is_file() and ".git" not in file.parts:
            os.utime(file, (past, past))
    subprocess.run(["git", "-C", str(path), "update-index", "-q", "--refresh"], check=True)


def _commit(repo: pygit2.Repository, message: str) -> None:
    repo.index.add_all()
    repo.index.write()
    author = pygit2.Signature("bench", "bench@example.com", 1_700_000_000, 0)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    repo.create_commit("HEAD", author, author, message, repo.index.write_tree(), parents)


async def discard(request: web.Request) -> web.StreamResponse:
    tail = b""
    async for chunk in request.content.iter_any():
        tail = (tail + chunk)[-4096:]  # the client's own fields come last in the spliced body
    if b'"stream":true' not in tail:
        return web.Response(body=ANSWER, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for number in range(STREAM_CHUNKS):
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"%d "}}]}\n\n' % number)
    await response.write(b"data: [DONE]\n\n")
    return response


async def tokenize(request: web.Request) -> web.Response:
    """llama.cpp's `/tokenize` answer for a text: a token id per 4 bytes (its ids listed, as llama.cpp does)."""
    content = (await request.json())["content"]
    return web.json_response({"tokens": [1] * (len(content.encode()) // 4)})


def serve_upstream(port: int) -> None:
    app = web.Application(client_max_size=2**40)
    app.router.add_post("/v1/chat/completions", discard)
    app.router.add_post("/tokenize", tokenize)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def proxy_process(config: Path, workdir: Path, port: int) -> ProxyProcess:
    """The real proxy in its own process (its log next to the config), ready within two minutes."""
    return ProxyProcess(
        config, workdir / f"proxy-{port}.log", port=port, env={"PYTHONPATH": str(ROOT)}, ready_timeout=120
    )


async def timed_posts(session: aiohttp.ClientSession, url: str, body: bytes, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            await response.read()
            assert response.status == 200, response.status
        times.append(time.perf_counter() - started)
    return times


def spread(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), statistics.quantiles(times, n=100)[98] if len(times) > 1 else times[0]


async def stall_while(work: Callable[[], T]) -> tuple[T, float, float]:
    """`work` in a thread, its seconds, and the longest the event loop was held meanwhile."""
    started = time.perf_counter()
    running = asyncio.ensure_future(asyncio.to_thread(work))
    stall = 0.0
    while not running.done():
        tick = time.perf_counter()
        await asyncio.sleep(0.001)
        stall = max(stall, time.perf_counter() - tick - 0.001)
    return running.result(), time.perf_counter() - started, stall


def git_archive(repository: Path, commit: str) -> float:
    """Seconds for `git archive` of `commit` (to /dev/null): reading every blob, in C."""
    started = time.perf_counter()
    subprocess.run(["git", "-C", str(repository), "archive", commit], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def libgit2_diff(repository: Path) -> int:
    """libgit2's own index-assisted diff, HEAD → index → work tree, as the proxy asks it: the changed paths."""
    with opened(repository) as repo:
        head = head_commit(repo)
        assert head is not None
        index = repo.index
        diffs = (head.tree.diff_to_index(index, FLAGS), index.diff_to_workdir(FLAGS))
        return sum(1 for diff in diffs for _ in diff.deltas)


def proxy_diff(repository: Path, head: pygit2.Commit, rules: ContentRules) -> WorkingDiff:
    """The working diff as the proxy reads it per request (a repository handle of its own, released)."""
    with opened(repository) as repo:
        return working_diff(repo, head, head, rules, [])


def timed(work: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


def pool_start() -> float:
    """Seconds to start the worker processes, until each has answered a call."""
    workers = Workers()
    started = time.perf_counter()
    pool = workers.executor(POOL_MIN_ENTRIES)
    calls = [pool.submit(time.sleep, 0.2) for _ in range(workers.processes)]  # one call each, at once
    for call in calls:
        call.result()
    elapsed = time.perf_counter() - started - 0.2
    workers.close()
    return elapsed


def anonymous_rss(pid: int | str = "self") -> int:
    """Bytes of anonymous memory (not file-backed maps such as libgit2's packs) of a process."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


def build_as_served(reader: RepositoryReader, *args: Any) -> Snapshot:
    """A build as `serve` runs one: the process tuned after it, in the same thread (`runtime.after_build`)."""
    snapshot = reader.build(*args)
    after_build()
    return snapshot


async def snapshot_costs(repository: Path, config: Config) -> Snapshot:
    """The snapshot as the proxy builds it, beside `git archive`; a rebase; the diff beside libgit2's."""
    rules = ContentRules.from_config(config)
    cap = config.repository.max_snapshot_bytes
    repo = open_repository(repository)
    head = head_commit(repo)
    assert head is not None, "the benchmark needs a repository with commits"
    parent = head.parents[0] if head.parents else head
    changed = len(changed_paths(parent.tree, head.tree))
    reader = RepositoryReader(repository, rules, cap, Workers())
    try:
        archive = git_archive(repository, str(parent.id))
        first, build, stall = await stall_while(lambda: build_as_served(reader, str(parent.id), None))
        archive = min(archive, git_archive(repository, str(parent.id)))
        # The build's history walks, each alone in a worker process, as a build runs them: here,
        # libgit2 freeing a walk's memory holds the GIL for tens of milliseconds.
        pool = reader.workers.executor(first.files)
        _, walk, _ = await stall_while(
            lambda: pool.submit(history, repository, str(parent.id), None, 0, HISTORY_WINDOW).result()
        )
        _, naming, _ = await stall_while(
            lambda: pool.submit(changes_and_key, repository, str(parent.id), None, None).result()
        )
        assert first.rendered is not None
        keys = list(first.rendered.sections)
        _, rendering, _ = await stall_while(lambda: pool.submit(render_entries, repository, keys, rules).result())
        _, warm, _ = await stall_while(lambda: build_as_served(reader, str(parent.id), None))
        starting = pool_start()
        snapshot, rebase, rebase_stall = await stall_while(
            lambda: build_as_served(reader, str(head.id), first.epoch, first)
        )
    finally:
        reader.close()
    megabytes = first.text_bytes / 1e6
    print(
        f"snapshot build, cold (HEAD^, secrets scanned, {Workers().processes} worker processes): {build:.2f} s for "
        f"{megabytes:.1f} MB, {first.files} files; git archive of the same tree: {archive:.2f} s; "
        f"ratio {build / archive:.1f}x (goal <= 3)"
    )
    print(
        f"  the same build with the worker processes already running: {warm:.2f} s, ratio {warm / archive:.1f}x; "
        f"starting them (once, by the first large build) takes {starting:.2f} s"
    )
    print(
        f"  its work, each part alone in one worker: rendering {len(keys)} entries {rendering:.2f} s, the file "
        f"order (up to {HISTORY_WINDOW} commits of history) {walk:.2f} s, the repository's name (its first-parent "
        f"line to the first commit) {naming:.2f} s; {rendering + walk + naming:.2f} s in all, "
        f"{(rendering + walk + naming) / archive:.1f}x git archive on one core"
    )
    _, _, idle = await stall_while(lambda: time.sleep(build))
    print(
        f"  longest event-loop stall during the build: {stall * 1000:.1f} ms (goal <= 20); with nothing "
        f"running, as long (the machine's own noise): {idle * 1000:.1f} ms"
    )
    print(
        f"rebase HEAD^ -> HEAD ({changed} files changed), reusing sections: {rebase:.2f} s = "
        f"{rebase / build:.1%} of the cold build (goal <= 10%); longest stall {rebase_stall * 1000:.1f} ms"
    )
    diff_times, libgit2_times = [], []
    for _ in range(20):  # interleaved, so drift in the machine hits both alike
        diff_times += timed(lambda: proxy_diff(repository, head, rules), 1)
        libgit2_times += timed(lambda: libgit2_diff(repository), 1)
    files = proxy_diff(repository, head, rules).files
    diff_ms, libgit2_ms = statistics.median(diff_times) * 1000, statistics.median(libgit2_times) * 1000
    print(
        f"working diff ({files} changed files): {diff_ms:.1f} ms; libgit2's index-assisted diff alone: "
        f"{libgit2_ms:.1f} ms; ratio {diff_ms / libgit2_ms:.2f} (goal <= 1.2)"
    )
    return snapshot


def memory_costs(repository: Path, config_path: Path) -> dict[str, int]:
    """In this (fresh) process: anonymous RSS empty, with one epoch, its peak during a rebase, with
    the old epoch remembered, and the worker processes'."""
    config = load_config(config_path)
    rules = ContentRules.from_config(config)
    repo = open_repository(repository)
    head = head_commit(repo)
    assert head is not None
    parent = head.parents[0] if head.parents else head
    settle()  # as the server does once it is set up
    figures = {"empty": anonymous_rss()}
    reader = RepositoryReader(repository, rules, config.repository.max_snapshot_bytes, Workers())
    first = build_as_served(reader, str(parent.id), None)
    gc.collect()
    figures["one epoch"] = anonymous_rss()
    figures["snapshot bytes"] = sum(map(len, first.json_text))
    figures["workers"] = sum(anonymous_rss(pid) for pid in children(os.getpid()))
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], anonymous_rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    second = build_as_served(reader, str(head.id), first.epoch, first)
    done.set()
    sampler.join()
    gc.collect()
    figures["rebase peak"] = peak[0]
    figures["two epochs"] = anonymous_rss()  # the old one remembered
    del first
    gc.collect()
    figures["after rebase"] = anonymous_rss()
    reader.close()
    assert second.commit == str(head.id)
    return figures


def report_memory(figures: dict[str, int]) -> None:
    size, empty = figures["snapshot bytes"], figures["empty"]
    steady = figures["after rebase"] - empty
    print(
        f"anonymous RSS (fresh process, empty {empty / 2**20:.0f} MiB): one epoch of a {size / 1e6:.1f} MB snapshot "
        f"adds {steady / 1e6:.1f} MB = {steady / size:.2f}x its bytes (goal <= 2); peak during a rebase "
        f"+{(figures['rebase peak'] - empty) / 1e6:.1f} MB; each remembered epoch "
        f"+{(figures['two epochs'] - figures['after rebase']) / 1e6:.1f} MB; worker processes "
        f"{figures['workers'] / 1e6:.1f} MB"
    )


async def measure(repository: Path, count: int, workdir: Path) -> None:
    text_bytes = sum(p.stat().st_size for p in repository.rglob("*") if p.is_file() and ".git" not in p.parts)
    print(f"repository: {repository} ({text_bytes / 1e6:.1f} MB in the work tree)")

    config_path = _write_config(workdir, repository, upstream_port := free_port(), proxy_port := free_port())
    config = load_config(config_path)
    rules = ContentRules.from_config(config)
    repo = open_repository(config.repository.path)
    base = head_commit(repo)
    assert base is not None, "the benchmark needs a repository with commits"
    settle()  # as the server does once it is set up
    snapshot = await snapshot_costs(repository, config)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    memory = subprocess.run(
        [sys.executable, "-m", "tests.tools.benchmark", "--memory", str(repository), "--config", str(config_path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    report_memory(json.loads(memory.stdout))
    diff = working_diff(repo, base, base, rules, [])

    question = parse_chat_request(json.dumps(QUESTION).encode(), RequestRules("bench"))
    body = b"".join(CHAT.body(question, question.parts, snapshot.json_text, diff.json_text).chunks)
    decoded = json.loads(body)
    own = []
    for _ in range(min(count, 20)):  # what the proxy itself does per request, minus the network
        started = time.perf_counter()
        chat = parse_chat_request(json.dumps(QUESTION).encode(), RequestRules("bench"))
        diff_now = proxy_diff(repository, base, rules)
        CHAT.body(chat, chat.parts, snapshot.json_text, diff_now.json_text)
        own.append(time.perf_counter() - started)

    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.tools.benchmark", "--serve-upstream", str(upstream_port)], env=env
    )
    try:
        await counting_costs(repository, config, upstream_port)
        async with proxy_process(config_path, workdir, proxy_port) as proxy:
            timeout = aiohttp.ClientTimeout(total=None)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
                proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
                small = json.dumps(QUESTION).encode()
                await timed_posts(session, direct_url, body, 3)  # warm both paths
                await timed_posts(session, proxy_url, small, 3)
                direct, through = [], []
                for _ in range(count):  # interleaved, so drift in the machine hits both alike
                    direct += await timed_posts(session, direct_url, body, 1)
                    through += await timed_posts(session, proxy_url, small, 1)
                gc.collect()
                serving = anonymous_rss(proxy.pid)
                for number in range(CONVERSATIONS):  # each a conversation of its own
                    asked = dict(QUESTION, messages=[{"role": "user", "content": f"Question {number}?"}])
                    await timed_posts(session, proxy_url, json.dumps(asked).encode(), 1)
                conversations = anonymous_rss(proxy.pid)
                workers = sum(anonymous_rss(pid) for pid in children(proxy.pid))
            empty = await empty_proxy_rss(workdir, upstream_port)
            await load(workdir, upstream_port)
    finally:
        upstream.terminate()
        upstream.wait(30)
    naive = []
    for _ in range(min(count, 20)):
        started = time.perf_counter()
        json.dumps(decoded, ensure_ascii=False).encode()
        naive.append(time.perf_counter() - started)

    (direct_median, direct_p99), (proxy_median, proxy_p99), (naive_median, naive_p99), (own_median, own_p99) = map(
        spread, (direct, through, naive, own)
    )
    added = proxy_median - direct_median
    print(f"upstream body: {len(body) / 1e6:.1f} MB; {count} requests each way, interleaved")
    print(f"{'':34}{'median':>10}{'p99':>10}")
    for label, median, p99 in (
        ("direct to upstream (loopback)", direct_median, direct_p99),
        ("through the proxy", proxy_median, proxy_p99),
        ("naive json.dumps of the body", naive_median, naive_p99),
        ("proxy's own work (diff + splice)", own_median, own_p99),
    ):
        print(f"{label:34}{median * 1000:>8.1f}ms{p99 * 1000:>8.1f}ms")
    print(f"{'proxy added, end to end (median)':34}{added * 1000:>8.1f}ms  (negative: within noise)")
    cost = max(added, own_median)
    print(
        f"added / loopback send: {cost / direct_median:.2f}  (goal <= 2; added taken as at least the proxy's own work)"
    )
    print(f"naive re-serialising / added: {naive_median / cost:.1f}x  (goal >= 5)")
    size = sum(map(len, snapshot.json_text))
    print(
        f"proxy anonymous RSS serving one epoch: {serving / 2**20:.0f} MiB; an empty proxy (one-file repository) "
        f"{empty / 2**20:.0f} MiB; difference {(serving - empty) / size:.2f}x the {size / 1e6:.1f} MB snapshot "
        f"(goal <= 2); each conversation +{(conversations - serving) / CONVERSATIONS / 1e3:.0f} kB "
        f"({CONVERSATIONS} opened); idle worker processes {workers / 2**20:.0f} MiB"
    )


async def counting_costs(repository: Path, config: Config, port: int) -> None:
    """What fitting to a window adds to a build: every file's tokens counted by the upstream's
    `/tokenize` (here a minimal one in its own process), the choice made, the snapshot assembled
    again; cold (every file counted) and on a rebase (only the changed ones), beside the same
    builds unfitted, in the same process with the workers running."""
    rules = ContentRules.from_config(config)
    repo = open_repository(repository)
    head = head_commit(repo)
    assert head is not None
    parent = str((head.parents[0] if head.parents else head).id)
    reader = RepositoryReader(repository, rules, config.repository.max_snapshot_bytes, Workers())
    async with aiohttp.ClientSession() as session:

        async def ask(body: bytes) -> tuple[int, bytes]:
            headers = {"Content-Type": "application/json"}
            async with session.post(f"http://127.0.0.1:{port}/tokenize", data=body, headers=headers) as answer:
                return answer.status, await answer.read()

        counter = TokenCounter(ask).bound("bench", "bench", None)
        try:
            plain, cold, _ = await stall_while(lambda: reader.build(parent, None))
            for window in (10_485_760, 1_048_576):
                fitting = fitting_for(config, window, counter, parent, None)
                counter.known.counts.clear()  # every file counted again: the cold case
                fitted, counting, stall = await stall_while(partial(reader.build, parent, None, None, fitting))
                assert fitting.fitted is not None
                print(
                    f"fitted to a {window:,}-token window, cold ({fitted.files + len(fitted.over_window)} files counted "
                    f"by /tokenize): {counting:.2f} s against {cold:.2f} s unfitted (+{counting - cold:.2f} s, "
                    f"{counting / cold:.1f}x); {fitting.fitted.describe()}; longest stall {stall * 1000:.1f} ms"
                )
            _, rebase, _ = await stall_while(lambda: reader.build(str(head.id), plain.epoch, plain))
            fitting = fitting_for(config, 1_048_576, counter, str(head.id), fitted.over_window)
            asked = len(counter.known.counts)
            _, refit, stall = await stall_while(lambda: reader.build(str(head.id), fitted.epoch, fitted, fitting))
            print(
                f"  a rebase HEAD^ -> HEAD, fitted: {refit:.2f} s against {rebase:.2f} s unfitted "
                f"(+{(refit - rebase) * 1000:.0f} ms; {len(counter.known.counts) - asked} new contents counted); "
                f"longest stall {stall * 1000:.1f} ms"
            )
        finally:
            reader.close()


def children(pid: int) -> list[int]:
    return [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]


async def empty_proxy_rss(workdir: Path, upstream_port: int) -> int:
    """Anonymous RSS of a proxy serving a one-file repository, after one request: the empty process."""
    tiny = workdir / "tiny"
    repo = pygit2.init_repository(str(tiny), initial_head="main")
    (tiny / "README").write_text("tiny\n")
    _commit(repo, "tiny")
    config_path = _write_config(workdir, tiny, upstream_port, port := free_port(), name="tiny.ini")
    async with proxy_process(config_path, workdir, port) as proxy:
        async with aiohttp.ClientSession() as session:
            await timed_posts(session, f"{proxy.url}/v1/chat/completions", json.dumps(QUESTION).encode(), 3)
        gc.collect()
        return anonymous_rss(proxy.pid)


async def load(workdir: Path, upstream_port: int) -> None:
    """200 concurrent streams through a proxy serving a 1 MB snapshot: throughput and peak RSS."""
    small = workdir / "small"
    generate_repository(small, files=100, file_bytes=10_000)
    config_path = _write_config(workdir, small, upstream_port, port := free_port(), name="load.ini")
    load_config(config_path)  # fails here, not in the child, on a config it rejects
    body = dict(QUESTION, stream=True)
    expected = "".join(f"{number} " for number in range(STREAM_CHUNKS))
    async with proxy_process(config_path, workdir, port) as proxy:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async with session.get(f"{proxy.url}/health") as health:
                snapshot_mb = (await health.json())["snapshot"]["bytes"] / 1e6

            async def one() -> int:
                async with session.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
                    text = await response.text()
                got = "".join(
                    json.loads(line[6:])["choices"][0]["delta"]["content"]
                    for line in text.split("\n")
                    if line.startswith("data: {")
                )
                assert got == expected, f"a stream lost or reordered bytes: {text[:300]!r}"
                return len(text)

            started = time.perf_counter()
            sizes = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
            seconds = time.perf_counter() - started
        with open(f"/proc/{proxy.pid}/status") as status:
            peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print(
        f"load: {CONCURRENT} concurrent streams ({STREAM_CHUNKS} chunks each) through a proxy with a "
        f"{snapshot_mb:.1f} MB snapshot: all complete and in order in {seconds:.2f} s, "
        f"{CONCURRENT / seconds:.0f} streams/s, {sum(sizes) / seconds / 1e6:.1f} MB/s; proxy peak RSS {int(peak) / 1024:.0f} MiB"
    )


def _write_config(
    workdir: Path, repository: Path, upstream_port: int, proxy_port: int, name: str = "bench.ini"
) -> Path:
    path = workdir / name
    path.write_text(
        f"[server]\nport = {proxy_port}\nlog_level = warning\nmax_body_bytes = 1MiB\n"
        f"max_concurrent_requests = {CONCURRENT}\n"
        f"[upstream]\nurl = http://127.0.0.1:{upstream_port}/v1\n"
        f"[repository]\npath = {repository}\nmax_snapshot_bytes = 1GiB\nmax_file_bytes = 4MiB\n"
        f"[context]\nstate_dir = {workdir / 'state'}\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "repository", nargs="?", type=Path, help="a git work tree (default: a generated 40 MB one, 10M tokens)"
    )
    parser.add_argument("--requests", type=int, default=50, help="requests per path (default 50)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--memory", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.memory:
        print(json.dumps(memory_costs(args.memory, args.config)))
        return
    with tempfile.TemporaryDirectory(prefix="scout-bench-") as scratch:
        workdir = Path(scratch)
        repository = args.repository
        if repository is None:
            repository = workdir / "generated"
            started = time.perf_counter()
            generate_mission_repository(repository)
            print(f"generated a mission-size repository in {time.perf_counter() - started:.1f} s")
        asyncio.run(measure(repository.resolve(), args.requests, workdir))
