"""The upstream's context window: read from each kind of server's own answer (recorded bodies),
learned through the proxy from a fake upstream, configured, shown in /health and `inspect`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scout_diff_cache.upstream.window import (
    NOT_REPORTED,
    UNLEARNED,
    Window,
    from_llama_props,
    from_models,
    from_ollama_ps,
    from_ollama_show,
    from_tgi_info,
    root_of,
)

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    UpstreamFactory,
    chat,
    free_port,
    run_cli,
    until_async,
    write_config,
)


def llama_props(n_ctx: int, slots: int) -> dict[str, Any]:
    """llama-server's /props (server-context.cpp `get_res_props`), `-c` divided by `-np` in n_ctx."""
    return {
        "default_generation_settings": {"params": {"n_predict": -1, "temperature": 0.8}, "n_ctx": n_ctx},
        "total_slots": slots,
        "model_alias": "gemma-3-270m",
        "model_path": "/models/gemma-3-270m.gguf",
        "modalities": {"vision": False, "audio": False},
        "chat_template": "{% for message in messages %}...{% endfor %}",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "build_info": "b6000-abcdef",
        "is_sleeping": False,
    }


#: llama-server in router mode (server-models.cpp): a dummy n_ctx of 0.
LLAMA_ROUTER_PROPS = {
    "role": "router",
    "max_instances": 4,
    "model_alias": "llama-server",
    "default_generation_settings": {"params": {}, "n_ctx": 0},
}
#: vLLM 0.32's /v1/models.
VLLM_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "gemma",
            "object": "model",
            "created": 1765000000,
            "owned_by": "vllm",
            "root": "/models/gemma-3-270m",
            "parent": None,
            "max_model_len": 8192,
            "permission": [{"id": "modelperm-1", "object": "model_permission", "allow_sampling": True}],
        }
    ],
}
#: A router's /v1/models: the names, no window.
ROUTER_MODELS = {"object": "list", "data": [{"id": "gemma", "object": "model", "created": 0, "owned_by": "router"}]}
#: TGI's /info.
TGI_INFO = {
    "model_id": "meta-llama/Llama-3.1-8B-Instruct",
    "model_sha": "0e9e39f249a16976918f6564b8830bc894c89659",
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 8191,
    "max_total_tokens": 8192,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": "3.3.4",
}
#: Ollama's /api/ps: the loaded model with the context it was loaded with.
OLLAMA_PS = {
    "models": [
        {
            "name": "qwen3:8b",
            "model": "qwen3:8b",
            "size": 6654289920,
            "digest": "500a1f067a9f782620b40bee6f7b0c89e17ae61f686b92c24933e4ca4b2b8b41",
            "details": {"format": "gguf", "family": "qwen3", "parameter_size": "8.2B", "quantization_level": "Q4_K_M"},
            "expires_at": "2026-12-07T05:00:00.000000000Z",
            "size_vram": 6654289920,
            "context_length": 4096,
        }
    ]
}
#: Ollama's /api/show: the model's own maximum in model_info, the context to load in parameters.
OLLAMA_SHOW = {
    "modelfile": "FROM qwen3:8b\nPARAMETER num_ctx 32768\n",
    "parameters": 'num_ctx                        32768\nstop                           "<|im_end|>"',
    "template": "{{ .Prompt }}",
    "details": {"format": "gguf", "family": "qwen3"},
    "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960},
}


def test_llama_cpp_reports_the_context_of_one_slot() -> None:
    assert from_llama_props(llama_props(16384, 1)) == Window(16384, "llama.cpp /props: n_ctx 16384 per slot (1 slot)")
    assert from_llama_props(llama_props(4096, 2)) == Window(4096, "llama.cpp /props: n_ctx 4096 per slot (2 slots)")
    assert from_llama_props(LLAMA_ROUTER_PROPS) is None  # a router's dummy 0 says nothing
    assert from_llama_props(VLLM_MODELS) is None and from_llama_props("not an object") is None


def test_vllm_and_sglang_report_max_model_len_of_the_configured_model_or_the_only_one() -> None:
    assert from_models(VLLM_MODELS, "gemma") == Window(8192, "/v1/models: max_model_len of gemma")
    assert from_models(VLLM_MODELS, "another") == Window(8192, "/v1/models: max_model_len of gemma")
    two = {"data": [*VLLM_MODELS["data"], {"id": "big", "max_model_len": 131072}]}
    assert from_models(two, "big") == Window(131072, "/v1/models: max_model_len of big")
    assert from_models(two, "neither") is None


def test_a_router_without_max_model_len_reports_no_window() -> None:
    assert from_models(ROUTER_MODELS, "gemma") is None


def test_tgi_reports_its_total_tokens() -> None:
    assert from_tgi_info(TGI_INFO) == Window(8192, "TGI /info: max_total_tokens 8192 (max_input_tokens 8191)")
    assert from_tgi_info({"max_input_tokens": 4095}) == Window(4095, "TGI /info: max_input_tokens 4095")
    assert from_tgi_info({"model_id": "m"}) is None


def test_ollama_reports_the_loaded_context_or_the_num_ctx_it_would_load() -> None:
    assert from_ollama_ps(OLLAMA_PS, "qwen3:8b") == Window(4096, "Ollama /api/ps: context_length of qwen3:8b as loaded")
    assert from_ollama_ps({"models": []}, "qwen3:8b") is None  # nothing loaded
    assert from_ollama_show(OLLAMA_SHOW) == Window(32768, "Ollama /api/show: num_ctx 32768")
    assert from_ollama_show({**OLLAMA_SHOW, "parameters": 'stop "<|im_end|>"'}) is None  # its maximum is not loaded


def test_the_root_is_the_url_without_v1() -> None:
    assert root_of("http://host:8000/v1") == "http://host:8000"
    assert root_of("http://host:8080") == "http://host:8080"


async def window_of(client: TestClient) -> dict[str, Any]:
    """The window `/health` shows: its tokens and where they come from (its split: test_fitting.py)."""
    window = (await (await client.get("/health")).json())["window"]
    return {"tokens": window["tokens"], "source": window["source"]}


@pytest.mark.parametrize(
    ("about", "model", "expected"),
    [
        ({"GET /props": llama_props(8192, 2)}, "m", Window(8192, "llama.cpp /props: n_ctx 8192 per slot (2 slots)")),
        ({"GET /v1/models": VLLM_MODELS}, "gemma", Window(8192, "/v1/models: max_model_len of gemma")),
        ({"GET /info": TGI_INFO}, "m", Window(8192, "TGI /info: max_total_tokens 8192 (max_input_tokens 8191)")),
        ({"GET /api/ps": OLLAMA_PS}, "qwen3:8b", Window(4096, "Ollama /api/ps: context_length of qwen3:8b as loaded")),
        ({"POST /api/show": OLLAMA_SHOW}, "qwen3:8b", Window(32768, "Ollama /api/show: num_ctx 32768")),
        (
            {"GET /props": LLAMA_ROUTER_PROPS, "GET /v1/models": VLLM_MODELS},
            "gemma",
            Window(8192, "/v1/models: max_model_len of gemma"),
        ),
    ],
    ids=["llama.cpp", "vllm", "tgi", "ollama-ps", "ollama-show", "llama.cpp-router"],
)
async def test_the_window_is_learned_at_start_from_each_kind_of_server(
    make_proxy: ProxyFactory, upstream: FakeUpstream, about: dict[str, Any], model: str, expected: Window
) -> None:
    upstream.about = about
    client = await make_proxy(upstream={"model": model})
    await until_async(lambda: window_of(client), {"tokens": expected.tokens, "source": expected.source})


async def test_the_servers_are_asked_in_order_until_one_tells(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy()
    expected = {"tokens": None, "source": NOT_REPORTED.source}
    await until_async(lambda: window_of(client), expected)
    assert upstream.asked_about == ["GET /props", "GET /v1/models", "GET /info", "GET /api/ps", "POST /api/show"]
    assert (await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Hi"}))).status == 200
    assert len(upstream.asked_about) == 5  # an upstream that tells none is not asked again per request


async def test_a_configured_window_asks_the_upstream_nothing(
    make_proxy: ProxyFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.about = {"GET /props": llama_props(8192, 1)}
    with caplog.at_level(logging.INFO, "scout_diff_cache"):
        client = await make_proxy(upstream={"context_window": "100000"})
        assert (await client.post("/v1/chat/completions", json=chat({"role": "user", "content": "Hi"}))).status == 200
    assert await window_of(client) == {"tokens": 100000, "source": "[upstream] context_window"}
    assert [asked for asked in upstream.asked_about if asked != "POST /tokenize"] == []  # files are counted
    assert "upstream context window: 100,000 tokens ([upstream] context_window)" in caplog.text


async def test_the_window_is_learned_once_the_upstream_answers_and_again_after_it_was_away(
    make_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    port = free_port()
    client = await make_proxy(url=f"http://127.0.0.1:{port}/v1")
    question = chat({"role": "user", "content": "Hi"})
    assert (await client.post("/v1/chat/completions", json=question)).status == 503
    assert await window_of(client) == {"tokens": None, "source": UNLEARNED.source}
    small = await make_upstream(port=port)
    small.about = {"GET /props": llama_props(4096, 1)}
    assert (await client.post("/v1/chat/completions", json=question)).status == 200
    await until_async(
        lambda: window_of(client), {"tokens": 4096, "source": "llama.cpp /props: n_ctx 4096 per slot (1 slot)"}
    )
    assert small.server is not None
    await small.server.close()
    assert (await client.post("/v1/chat/completions", json=question)).status == 503
    large = await make_upstream(port=port)  # the model server came back with another context
    large.about = {"GET /props": llama_props(16384, 1)}
    assert (await client.post("/v1/chat/completions", json=question)).status == 200
    await until_async(
        lambda: window_of(client), {"tokens": 16384, "source": "llama.cpp /props: n_ctx 16384 per slot (1 slot)"}
    )


async def test_inspect_shows_the_window_and_where_it_came_from(
    tmp_path: Path, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    upstream.about = {"GET /props": llama_props(8192, 2)}
    sections = {"repository": {"path": str(git_repo.path)}, "upstream": {"url": upstream.url}}
    path = write_config(tmp_path, {**sections, "context": {"state_dir": str(tmp_path / "state")}})
    done = await asyncio.to_thread(run_cli, "--config", str(path), "inspect")
    assert done.returncode == 0, done.stderr
    assert "window       8,192 tokens (llama.cpp /props: n_ctx 8192 per slot (2 slots))" in done.stdout
