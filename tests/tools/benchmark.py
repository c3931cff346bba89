"""`make bench`: what the proxy costs per request, measured side by side in one run.

    python -m tests.tools.benchmark [REPOSITORY] [--requests N]

Without REPOSITORY it generates one of about 50 MB of text in 5,000 files. It starts a minimal
upstream (reads and discards each body, answers a small completion) and the real proxy, each in its
own process on loopback, then times, for the same upstream body:
  direct   the client POSTs the fully assembled body straight to the upstream (the loopback cost);
  proxy    the client POSTs its small body to the proxy, which injects snapshot and diff;
  naive    json.dumps of that whole body, as a proxy that re-serialises per request would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pygit2
from aiohttp import web

from scout_diff_cache.config import load_config
from scout_diff_cache.diff import working_diff
from scout_diff_cache.prompt import assemble
from scout_diff_cache.repository import ContentRules, head_commit, open_repository
from scout_diff_cache.snapshot import build_snapshot
from scout_diff_cache.validation import parse_chat_request
from tests.support import ProxyProcess, free_port

#: The project root, so that the child processes find `scout_diff_cache` and `tests`.
ROOT = Path(__file__).resolve().parents[2]

STREAM_CHUNKS = 50
CONCURRENT = 200
QUESTION = {"model": "bench", "messages": [{"role": "user", "content": "Where is the cache invalidated?"}]}
ANSWER = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}).encode()


def generate_repository(path: Path, files: int = 5000, file_bytes: int = 10_000) -> None:
    """Deterministic source-like text (same seed, same repository), plus one uncommitted edit."""
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
    repo.index.add_all()
    repo.index.write()
    author = pygit2.Signature("bench", "bench@example.com", 1_700_000_000, 0)
    repo.create_commit("HEAD", author, author, "generated", repo.index.write_tree(), [])
    (path / "pkg00" / "module0000.py").write_text("# an uncommitted edit\n")


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


def serve_upstream(port: int) -> None:
    app = web.Application(client_max_size=2**40)
    app.router.add_post("/v1/chat/completions", discard)
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


async def measure(repository: Path, count: int, workdir: Path) -> None:
    text_bytes = sum(p.stat().st_size for p in repository.rglob("*") if p.is_file() and ".git" not in p.parts)
    print(f"repository: {repository} ({text_bytes / 1e6:.1f} MB in the work tree)")

    config_path = _write_config(workdir, repository, upstream_port := free_port(), proxy_port := free_port())
    config = load_config(config_path)
    rules = ContentRules.from_config(config)
    repo = open_repository(config.repository.path)
    base = head_commit(repo)
    started = time.perf_counter()
    building = asyncio.ensure_future(
        asyncio.to_thread(
            build_snapshot,
            config.repository.path,
            str(base.id) if base else None,
            rules,
            config.repository.max_snapshot_bytes,
            None,
        )
    )
    stall = 0.0
    while not building.done():  # how long the event loop is held while a build runs in its thread
        tick = time.perf_counter()
        await asyncio.sleep(0.001)
        stall = max(stall, time.perf_counter() - tick - 0.001)
    snapshot = building.result()
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    diff = working_diff(repo, base, base, rules, [])
    diff_seconds = time.perf_counter() - started
    print(
        f"snapshot build: {build_seconds:.2f} s for {snapshot.text_bytes / 1e6:.1f} MB, {snapshot.files} files inlined; "
        f"longest event-loop stall meanwhile {stall * 1000:.0f} ms"
    )
    print(f"working diff: {diff_seconds * 1000:.1f} ms ({diff.files} changed files)")

    question = parse_chat_request(json.dumps(QUESTION).encode(), "bench")
    body = b"".join(assemble(question.messages, question.fields, snapshot.message, diff.message).chunks)
    decoded = json.loads(body)
    own = []
    for _ in range(min(count, 20)):  # what the proxy itself does per request, minus the network
        started = time.perf_counter()
        chat = parse_chat_request(json.dumps(QUESTION).encode(), "bench")
        diff_now = working_diff(open_repository(repository), base, base, rules, [])
        assemble(chat.messages, chat.fields, snapshot.message, diff_now.message)
        own.append(time.perf_counter() - started)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.tools.benchmark", "--serve-upstream", str(upstream_port)], env=env
    )
    try:
        async with proxy_process(config_path, workdir, proxy_port):
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
        f"[repository]\npath = {repository}\nmax_snapshot_bytes = 1GiB\n"
        f"[context]\nstate_dir = {workdir / 'state'}\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", type=Path, help="a git work tree (default: a generated 50 MB one)")
    parser.add_argument("--requests", type=int, default=50, help="requests per path (default 50)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    with tempfile.TemporaryDirectory(prefix="scout-bench-") as scratch:
        workdir = Path(scratch)
        repository = args.repository
        if repository is None:
            repository = workdir / "generated"
            started = time.perf_counter()
            generate_repository(repository)
            print(f"generated a repository of 5,000 files in {time.perf_counter() - started:.1f} s")
        asyncio.run(measure(repository.resolve(), args.requests, workdir))


if __name__ == "__main__":
    main()
