"""What the end-to-end modules share: a small real repository, an agent's turn on any API, the
upstream's own cache figures, a server process's health, and the strict-template check that
llama-server and vLLM both pass."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from scout_diff_cache.app import make_app

from reconstruction import as_chat, check, check_conversation, parse_snapshot, split_strict
from support import GitRepo, Tap, is_warmup, proxy_config

#: Real source for the repository: three of this project's own modules (about 2,700 tokens).
PACKAGE = Path(__file__).resolve().parent.parent / "scout_diff_cache"
SOURCES = ("errors.py", "patterns.py", "git/epoch.py")


def make_repository(path: Path) -> GitRepo:
    repo = GitRepo(path)
    for name in SOURCES:
        repo.write(f"proxy/{Path(name).name}", (PACKAGE / name).read_text())
    repo.write("README.md", "# A small real repository for the end-to-end test\n")
    repo.commit("initial")
    return repo


#: An agent's own system prompt: what a conversation resends in front of its turns (~1,000 tokens).
AGENT_PROMPT = "You are a careful coding agent. Read the repository before you answer, and say where. " * 50


async def upstream_totals(client: TestClient) -> tuple[int, int]:
    """The upstream's own prompt and cached token totals, as /metrics keeps them."""
    text = await (await client.get("/metrics")).text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("scout_upstream_"))
    return int(values["scout_upstream_prompt_tokens_total"]), int(values["scout_upstream_cached_tokens_total"])


async def agent_turn(client: TestClient, api: str, turns: list[str], stream: bool) -> dict[str, int]:
    """One request on `api` with the agent's system prompt: what the client was told (its own
    prompt tokens) and what the upstream really counted (from /metrics)."""
    before = await upstream_totals(client)
    messages: list[dict[str, Any]] = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": text} for index, text in enumerate(turns)
    ]
    if api == "responses":
        for message in messages:
            message["type"] = "message"  # llama.cpp takes an assistant item only with its type
        body: dict[str, Any] = {"instructions": AGENT_PROMPT, "input": messages, "max_output_tokens": 1}
    elif api == "chat/completions":
        body = {"messages": [{"role": "system", "content": AGENT_PROMPT}, *messages], "max_tokens": 1}
    else:
        body = {"system": [{"type": "text", "text": AGENT_PROMPT}], "messages": messages, "max_tokens": 1}
    response = await client.post(f"/v1/{api}", json={"model": "gemma", "temperature": 0, "stream": stream, **body})
    assert response.status == 200, await response.text()
    if stream:
        events = [json.loads(line[5:]) for line in (await response.read()).split(b"\n") if line.startswith(b"data:")]
        usage = next(
            e["response"]["usage"] if api == "responses" else e["message"]["usage"]
            for e in events
            if e["type"] in ("response.completed", "message_start")
        )
    else:
        usage = (await response.json())["usage"]
    told = usage.get("prompt_tokens", 0) + usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0)
    after = await upstream_totals(client)
    return {"told": told, "prompt": after[0] - before[0], "cached": after[1] - before[1]}


def wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    """Until `url`/health answers 200; the server's log if it exits first or never answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy in {seconds:g}s: {log.read_text()[-3000:]}")


#: Where `make vllm` installs vLLM and puts the converted model: beside the project's venv.
VLLM = Path(sys.prefix) / "vllm"


def start_vllm(port: int, log: Path, max_model_len: int = 8192) -> subprocess.Popen[bytes]:
    """A real vLLM (its CPU build) on 127.0.0.1 serving the e2e model as `gemma`, with prefix
    caching and cached tokens reported; its internal messaging on loopback, no hub, no usage
    report, 2 GiB of KV cache."""
    environment = {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "2",
    }
    command = [
        str(VLLM / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(VLLM / "model"), "--served-model-name", "gemma"),
        *("--host", "127.0.0.1", "--port", str(port)),
        # float32: without AVX-512 this CPU runs bf16 about five times slower
        *("--dtype", "float32", "--max-model-len", str(max_model_len), "--enforce-eager"),
        *("--enable-prefix-caching", "--enable-prompt-tokens-details"),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment
        )


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(30)


async def strict_template_turns(
    server: str, api: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any, prompt: str = "text"
) -> str:
    """A one-shot question, then a conversation's next turn after an edit, on `api` through the
    proxy in front of a server whose template is Gemma 3's (one system message, strict alternation):
    every request answers 200, the proxy learned the strict layout, what the server received (seen
    by a recording tap; as token ids and text with `prompt` = tokens) rebuilds the work tree, and
    the second prompt is >= 95% cached. The report line."""
    tap = Tap(server)
    tapped = await aiohttp_server(tap.app(), host="127.0.0.1")
    repo = make_repository(tmp_path / "repo")
    url = str(tapped.make_url("/v1"))
    upstream = {"first_byte_timeout": "10m", "model": "gemma", "prompt": prompt}  # the name vLLM serves it under
    config = proxy_config(tmp_path, repo, url, context={"layout": "auto"}, upstream=upstream)
    client = await aiohttp_client(make_app(config))
    first = await agent_turn(client, api, ["Where are errors built?"], stream=False)
    repo.write("proxy/errors.py", (repo.path / "proxy/errors.py").read_text() + "\n# an edit between turns\n")
    second = await agent_turn(client, api, ["Where are errors built?", "In proxy/errors.py.", "What changed?"], False)
    assert second["cached"] >= 0.95 * first["prompt"], (first, second)
    layout = (await (await client.get("/health")).json())["layout"]
    assert layout["name"] == "strict" and "refused a second system message" in layout["reason"], layout
    paths = ("/completion", f"/v1/{api}") if prompt == "tokens" else (f"/v1/{api}",)
    received = [seen.json for seen in tap.seen if seen.path in paths and not is_warmup(seen.json)]
    assert len(received) == 2
    if prompt == "tokens":
        check_conversation(gemma_turns(sent_prompt(server, received[-1])), repo.path)
    else:
        check_conversation(as_chat(paths[0], received[-1]), repo.path)
    return (
        f"{f'strict template, {api}, prompt = {prompt}, after an edit':58} prompt {second['prompt']:5}  cached {second['cached']:5}"
        f"  ({second['cached'] / first['prompt']:.0%} of the first prompt, {first['prompt']})"
    )


def post_json(url: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def sent_prompt(server: str, body: dict[str, Any]) -> str:
    """The prompt a body sent as ids carries, as text (detokenised by the server; <bos> left out):
    llama.cpp's `/completion` `[ids…, "tail"]`, or vLLM's `kv_transfer_params.prompt_token_ids`."""
    if "kv_transfer_params" in body:
        ids = body["kv_transfer_params"]["prompt_token_ids"]
        return str(post_json(f"{server}/detokenize", {"model": "gemma", "tokens": ids})["prompt"]).removeprefix("<bos>")
    *ids, tail = body["prompt"]
    return str(post_json(f"{server}/detokenize", {"tokens": ids[1:]})["content"]) + tail


def gemma_turns(prompt: str) -> list[dict[str, object]]:
    """A prompt rendered by Gemma 3's template, as the separate layout's chat messages: the first
    user turn opens with the strict layout's system text (snapshot, working diff, own text)."""
    turns = [turn.removesuffix("<end_of_turn>\n") for turn in prompt.split("<start_of_turn>")[1:]]
    messages: list[dict[str, object]] = []
    for turn in turns:
        role, _, content = turn.partition("\n")
        messages.append({"role": "assistant" if role == "model" else role, "content": content})
    assert messages and messages[-1] == {"role": "assistant", "content": ""}, "no generation prompt at the end"
    snapshot, diff, own = split_strict(str(messages[0]["content"]))
    return [
        {"role": "system", "content": snapshot},
        {"role": "system", "content": diff},
        {"role": "user", "content": own},
        *messages[1:-1],
    ]


async def learned_window(server: str, tmp_path: Path, aiohttp_client: Any, **upstream: str) -> dict[str, Any]:
    """The window a proxy in front of `server` learns at start, as /health shows it once learned."""
    repo = make_repository(tmp_path / "repo")
    config = proxy_config(tmp_path, repo, f"{server}/v1", upstream=upstream)
    client = await aiohttp_client(make_app(config))
    for _ in range(600):
        window: dict[str, Any] = (await (await client.get("/health")).json())["window"]
        if not window["source"].startswith("not learned"):
            return {"tokens": window["tokens"], "source": window["source"]}  # its split: test_fitting.py
        await asyncio.sleep(0.05)
    raise AssertionError(f"the window was not learned in 30s: {window}")


async def overflow_errors(server: str, tmp_path: Path, aiohttp_client: Any, words: int, **upstream: str) -> str:
    """A question of `words` words, longer than `server`'s window, on chat and Messages through the
    proxy: each client gets the error its agents compact on, with the server's own figures. The
    Anthropic message, for the report."""
    repo = make_repository(tmp_path / "repo")
    config = proxy_config(tmp_path, repo, f"{server}/v1", upstream=upstream, context={"layout": "auto"})
    client = await aiohttp_client(make_app(config))
    question = [{"role": "user", "content": "word " * words}]
    chat = await client.post("/v1/chat/completions", json={"model": "gemma", "max_tokens": 1, "messages": question})
    assert chat.status == 400, await chat.text()
    assert (await chat.json())["error"]["code"] == "context_length_exceeded"
    body = {"model": "gemma", "max_tokens": 1, "messages": question}
    messages = await client.post("/v1/messages", json=body)
    assert messages.status == 400, await messages.text()
    error = (await messages.json())["error"]
    assert error["type"] == "invalid_request_error"
    found = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", error["message"])
    assert found is not None and int(found[1]) > int(found[2]) > 0, error
    return str(error["message"])


#: This project's own files, for a repository far larger than a small window.
PROJECT = PACKAGE.parent
PROJECT_FILES = ("README.md", "Makefile", "setup.cfg", "scout.ini.example", "scout_diff_cache/**/*.py", "tests/**/*.py")


def project_repository(path: Path) -> GitRepo:
    """A repository holding this project's own source, tests and docs (about 230k tokens)."""
    repo = GitRepo(path)
    for pattern in PROJECT_FILES:
        for source in sorted(PROJECT.glob(pattern)):
            repo.write(str(source.relative_to(PROJECT)), source.read_text())
    repo.commit("this project's own files")
    return repo


async def fitted_repository_turns(server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any) -> str:
    """Questions to the proxy in front of `server`, whose window is far smaller than this project's
    repository: the snapshot fits its part, what the server received (seen by a recording tap)
    rebuilds the files it includes and lists the rest as over the window, and after an edit and
    after a commit the same files are left out and >= 95% of the previous prompt is cached. The report."""
    tap = Tap(server)
    tapped = await aiohttp_server(tap.app(), host="127.0.0.1")
    repo = project_repository(tmp_path / "repo")
    config = proxy_config(tmp_path, repo, str(tapped.make_url("/v1")), upstream={"first_byte_timeout": "10m"})
    client = await aiohttp_client(make_app(config))
    figures, left_out = [], []
    steps = ("a first question", "a second question", "after an edit", "after a commit")
    for step in steps:
        if step == "after an edit":
            repo.write(
                "scout_diff_cache/errors.py", (repo.path / "scout_diff_cache/errors.py").read_text() + "# edited\n"
            )
        if step == "after a commit":
            repo.commit("commit the edit")
        body = {"max_tokens": 1, "messages": [{"role": "user", "content": f"What is this repository? ({step})"}]}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status == 200, await response.text()
        answer = await response.json()
        figures.append((answer["usage"]["prompt_tokens"], answer["timings"]["cache_n"]))
        received = [seen.json for seen in tap.seen if seen.path == "/v1/chat/completions" and not is_warmup(seen.json)]
        snapshot_text, diff_text = (message["content"] for message in received[-1]["messages"][:2])
        left_out.append(
            {path for path, why in parse_snapshot(snapshot_text).not_included.items() if why == "over the window"}
        )
        check(snapshot_text, diff_text, repo.path)
    health = await (await client.get("/health")).json()
    window, snapshot = health["window"], health["snapshot"]
    assert window["tokens"] == 16384 and snapshot["tokens"] <= window["split"]["snapshot"], health
    assert left_out[0] and all(chosen == left_out[0] for chosen in left_out), "the choice moved"
    for (prompt, _), (_, cached) in itertools.pairwise(figures):
        assert cached >= 0.95 * prompt, figures
    inlined = len(parse_snapshot(snapshot_text).files)
    lines = [
        f"this repository in a 16k window: {inlined} files inlined, {len(left_out[0])} over the window; "
        f"snapshot {snapshot['tokens']:,} of {window['split']['snapshot']:,} tokens ({window['split']})"
    ]
    previous = figures[0][0]
    for step, (prompt, cached) in zip(steps, figures, strict=True):
        lines.append(
            f"  {step:56} prompt {prompt:5}  cached {cached:5}  ({cached / previous:.0%} of the previous prompt)"
        )
        previous = prompt
    return "\n".join(lines)
