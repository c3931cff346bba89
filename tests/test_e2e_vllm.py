"""`make e2e-vllm`: the proxy in front of a real vLLM (its CPU build) serving the e2e model with
Gemma 3's chat template, which refuses any layout but one system message and strict alternation.

vLLM reports cached tokens in whole 128-token blocks on the CPU, so the thresholds leave a block
of room. `make e2e-vllm` installs vLLM in a venv of its own and converts the model once.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scout_diff_cache.app import make_app
from scout_diff_cache.upstream.id_routes import MARKER

from e2e import (
    learned_window,
    make_repository,
    overflow_errors,
    post_json,
    start_vllm,
    stop,
    strict_template_turns,
    wait_until_healthy,
)
from support import Tap, free_port, is_warmup, proxy_config

pytestmark = pytest.mark.vllm

REPORT: list[str] = []


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = start_vllm(port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log, 300)
        yield url
    finally:
        stop(server)
        if REPORT:
            print("\n" + "\n".join(REPORT))


def test_vllm_refuses_a_second_system_message(vllm_server: str) -> None:
    """What the proxy's probe meets: the template's own refusal, as a 400."""
    body = {"model": "gemma", "max_tokens": 1, "messages": [{"role": "system", "content": "a"}] * 2}
    request = urllib.request.Request(
        f"{vllm_server}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400
    assert "Conversation roles must alternate" in refused.value.read().decode()


@pytest.mark.parametrize("api", ["chat/completions", "responses", "messages"])
async def test_a_strict_template_takes_every_api_and_keeps_the_cache_across_an_edit(
    vllm_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any, api: str
) -> None:
    REPORT.append(await strict_template_turns(vllm_server, api, tmp_path, aiohttp_client, aiohttp_server))


async def test_the_window_learned_is_vllms_max_model_len(vllm_server: str, tmp_path: Path, aiohttp_client: Any) -> None:
    window = await learned_window(vllm_server, tmp_path, aiohttp_client, model="gemma")
    assert window == {"tokens": 8192, "source": "/v1/models: max_model_len of gemma"}


async def test_a_prompt_longer_than_max_model_len_gets_the_error_clients_compact_on(
    vllm_server: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    message = await overflow_errors(vllm_server, tmp_path, aiohttp_client, 9000, model="gemma")
    REPORT.append(f"over vLLM's max_model_len of 8,192: {message}")


async def test_token_ids_rebuild_the_work_tree_and_keep_the_cache_across_an_edit(
    vllm_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """The strict-template turns with prompt = tokens: what vLLM received as ids rebuilds the work tree."""
    turns = await strict_template_turns(
        vllm_server, "chat/completions", tmp_path, aiohttp_client, aiohttp_server, "tokens"
    )
    REPORT.append(turns)


async def greedy(client: Any, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """One greedy request: its answer's text, how it went upstream, and vLLM's prompt and cached tokens."""
    body = {"model": "gemma", "max_tokens": 8, "temperature": 0, "messages": messages, **fields}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200, await response.text()
    answer = await response.json()
    usage = answer["usage"]
    return {
        "text": answer["choices"][0]["message"]["content"],
        "path": response.headers["X-Scout-Prompt"],
        "prompt": usage["prompt_tokens"],
        "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
    }


async def test_token_ids_answer_as_text_does_with_and_without_tools(
    vllm_server: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """prompt = tokens and prompt = text side by side on one conversation with an edit and a commit
    between turns, the last turn with tools: the same greedy answers and prompt tokens, and each
    token turn >= 95% cached from the turn before (less one 128-token block)."""
    repo = make_repository(tmp_path / "repo")
    clients = {}
    for mode in ("tokens", "text"):
        (tmp_path / mode).mkdir()
        upstream = {"first_byte_timeout": "10m", "prompt": mode, "model": "gemma"}
        config = proxy_config(
            tmp_path / mode, repo, f"{vllm_server}/v1", upstream=upstream, context={"layout": "strict"}
        )
        clients[mode] = await aiohttp_client(make_app(config))
    tools = [
        {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}}}
    ]
    history: list[dict[str, Any]] = [{"role": "user", "content": "Where are errors built?"}]
    previous = None
    for turn in range(3):
        fields = {"tools": tools, "tool_choice": "none"} if turn == 2 else {}
        ids = await greedy(clients["tokens"], history, **fields)
        text = await greedy(clients["text"], history, **fields)
        REPORT.append(
            f"{f'prompt = tokens, turn {turn + 1}' + (' with tools' if fields else ''):58} prompt {ids['prompt']:5}"
            f"  cached {ids['cached']:5}; prompt = text: prompt {text['prompt']:5}  cached {text['cached']:5}"
        )
        paths = [
            line for line in (await (await clients["tokens"].get("/metrics")).text()).splitlines() if "prompt" in line
        ]
        assert (ids["path"], text["path"]) == ("tokens", "text"), paths
        assert (ids["text"], ids["prompt"]) == (text["text"], text["prompt"])
        assert text["cached"] >= text["prompt"] - 128  # the same tokens: all but the last block
        if previous is not None:
            assert ids["cached"] >= 0.95 * previous - 128, (ids, previous)
        previous = text["prompt"]
        edited = repo.path / "proxy/errors.py"
        edited.write_text(edited.read_text() + f"\n# an edit after turn {turn + 1}\n")
        if turn == 1:
            repo.commit("commit the edits")
        history += [{"role": "assistant", "content": ids["text"]}, {"role": "user", "content": f"And now ({turn})?"}]
    metrics = await (await clients["tokens"].get("/metrics")).text()
    assert 'scout_prompt_requests_total{path="tokens",reason="ok"} 3' in metrics
    times: dict[str, list[float]] = {"tokens": [], "text": []}
    for _ in range(3):  # the last turn again, fully cached, one token: interleaved (reported, not asserted)
        for mode, client in clients.items():
            started = time.perf_counter()
            await greedy(client, history, max_tokens=1)
            times[mode].append(time.perf_counter() - started)
    REPORT.append(
        f"{'the last turn again, cached, through the proxy (median of 3)':58} "
        + ", ".join(f"{mode} {statistics.median(seconds) * 1000:.0f} ms" for mode, seconds in times.items())
    )


async def test_a_conversations_ids_grow_and_are_vllms_own_tokens_of_the_whole_prompt(
    vllm_server: str, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Five turns of long messages with an edit between turns, prompt = tokens, through a recording
    tap: the ids each request sent are exactly vLLM's own tokens of its whole prompt (the snapshot in
    place of the marker), and past the epoch's one check no earlier message is tokenised again."""
    tap = Tap(vllm_server)
    tapped = await aiohttp_server(tap.app(), host="127.0.0.1")
    repo = make_repository(tmp_path / "repo")
    upstream = {"first_byte_timeout": "10m", "prompt": "tokens", "model": "gemma"}
    config = proxy_config(tmp_path, repo, str(tapped.make_url("/v1")), upstream=upstream, context={"layout": "strict"})
    client = await aiohttp_client(make_app(config))
    edited = repo.path / "proxy/errors.py"
    edited.write_text(edited.read_text() + "\n# an edit before the first turn, for a working diff\n" * 8)
    history: list[dict[str, Any]] = []
    lines = []
    for turn in range(5):
        history.append({"role": "user", "content": f"Question {turn}: " + " ".join(["where is it built?"] * 12)})
        before = len(tap.seen)
        answer = await greedy(client, history)
        assert answer["path"] == "tokens"
        sent = [seen.json for seen in tap.seen[before:] if seen.path == "/v1/chat/completions"]
        assert not is_warmup(sent[-1])
        tokenised = [seen.json for seen in tap.seen[before:] if seen.path == "/tokenize" and "messages" in seen.json]
        whole = [
            seen.json
            for seen in tap.seen
            if seen.path == "/tokenize"
            and "messages" in seen.json
            and MARKER not in json.dumps(seen.json, ensure_ascii=False)
        ]
        fields = {name: value for name, value in sent[-1].items() if name != "kv_transfer_params"}
        real = {**fields, "messages": [whole[0]["messages"][0], *sent[-1]["messages"][1:]]}
        own = post_json(f"{vllm_server}/tokenize", real)["tokens"]
        assert sent[-1]["kv_transfer_params"]["prompt_token_ids"] == own, turn
        asked = json.dumps(tokenised)
        if turn >= 2:  # past the epoch's one check (the second turn's), only new messages are tokenised whole
            assert all(json.dumps(message["content"])[1:-1] not in asked for message in history[:-2]), turn
            diff = sent[-1]["messages"][0]["content"].split(MARKER, 1)[1]  # the working diff, in the strict layout
            assert len(diff) > 400 and json.dumps(diff)[1:-1] not in asked, turn
        lines.append(f"{len(asked):,} of {len(json.dumps(sent[-1]['messages'])):,}")
        padding = " ".join(["it is there."] * 12)
        history.append({"role": "assistant", "content": f"Answer {turn}: {answer['text']} {padding}"})
        edited.write_text(edited.read_text() + f"\n# an edit after turn {turn + 1}\n")
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_prompt_checks_total{outcome="conversation match"} 1' in metrics
    REPORT.append(f"{'grown ids: bytes of chat bodies tokenised a turn, of the messages':58} " + ", ".join(lines))
