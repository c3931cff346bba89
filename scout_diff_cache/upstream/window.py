"""The upstream's context window: how many tokens one request may take, prompt and answer together.

`[upstream] context_window` sets it, or it is learned from the model server's own routes, asked
in a fixed order until one tells: llama.cpp's `GET /props` (`default_generation_settings.n_ctx`,
the context of one slot: `-c` divided by `-np`), vLLM's and SGLang's `GET /v1/models`
(`max_model_len`), TGI's `GET /info` (`max_total_tokens`), Ollama's `GET /api/ps` (the context of
the loaded model) and `POST /api/show` (a `num_ctx` parameter). Behind a router, it is what the
router reports, if anything. Each server's answer is read by a pure function below.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..errors import ProxyError
from ..shared import Learned, SharedTasks

log = logging.getLogger("scout_diff_cache")


@attrs.frozen
class Window:
    #: Tokens per request; None when nothing says.
    tokens: int | None
    #: Where the figure comes from: the setting, or which route of the upstream said what.
    source: str

    @property
    def streams_progress(self) -> bool:
        """Whether the upstream reports a prefill's progress as it goes: llama.cpp does (on a
        streamed request with `return_progress`), and is the server `/props` answered for."""
        return self.source.startswith(LLAMA_PROPS)

    def describe(self) -> str:
        return f"{self.tokens:,} tokens ({self.source})" if self.tokens else f"unknown ({self.source})"


#: Where a window llama.cpp reported comes from.
LLAMA_PROPS = "llama.cpp /props"


#: Until the upstream has answered (it is down, say).
UNLEARNED = Window(None, "not learned yet: the upstream has not answered")


#: The upstream answered, but none of the routes that tell a window did.
NOT_REPORTED = Window(
    None, "the upstream reports none at /props, /v1/models, /info, /api/ps or /api/show; set [upstream] context_window"
)


def configured(tokens: int | None) -> Window | None:
    """The window `[upstream] context_window` forces, or None for `auto`."""
    return None if tokens is None else Window(tokens, "[upstream] context_window")


def _count(value: object) -> int | None:
    """A positive whole number of tokens, or None (llama.cpp's router reports n_ctx 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _chosen(entries: list[Any], model: str, *names: str) -> dict[str, Any]:
    """The entry for `model` (by any of its name fields), or the only one."""
    entries = [entry for entry in entries if isinstance(entry, dict)]
    named = [entry for entry in entries if any(entry.get(name) == model for name in names)]
    return named[0] if named else entries[0] if len(entries) == 1 else {}


def from_llama_props(payload: object) -> Window | None:
    """llama.cpp `/props`: `n_ctx` is one slot's context, which is what one request gets."""
    tokens = _count(_dict(_dict(payload).get("default_generation_settings")).get("n_ctx"))
    if tokens is None:
        return None
    slots = _count(_dict(payload).get("total_slots"))
    per_slot = f" per slot ({slots} slot{'s' if slots != 1 else ''})" if slots else ""
    return Window(tokens, f"{LLAMA_PROPS}: n_ctx {tokens}{per_slot}")


def from_models(payload: object, model: str) -> Window | None:
    """vLLM's and SGLang's `/v1/models`: `max_model_len` of the configured model, or of the only one."""
    entry = _chosen(_list(_dict(payload).get("data")), model, "id", "root")
    tokens = _count(entry.get("max_model_len"))
    return Window(tokens, f"/v1/models: max_model_len of {entry.get('id')}") if tokens else None


def from_tgi_info(payload: object) -> Window | None:
    """TGI `/info`: `max_total_tokens` (prompt and answer; the prompt alone: `max_input_tokens`)."""
    info = _dict(payload)
    total, prompt = _count(info.get("max_total_tokens")), _count(info.get("max_input_tokens"))
    tokens = total or prompt
    if tokens is None:
        return None
    field = f"max_total_tokens {total}" + (f" (max_input_tokens {prompt})" if prompt and total else "")
    return Window(tokens, f"TGI /info: {field if total else f'max_input_tokens {prompt}'}")


def from_ollama_ps(payload: object, model: str) -> Window | None:
    """Ollama `/api/ps`: the context the model was loaded with (what Ollama cuts a prompt to)."""
    entry = _chosen(_list(_dict(payload).get("models")), model, "name", "model")
    tokens = _count(entry.get("context_length"))
    return Window(tokens, f"Ollama /api/ps: context_length of {entry.get('name')} as loaded") if tokens else None


def from_ollama_show(payload: object) -> Window | None:
    """Ollama `/api/show`: a `num_ctx` among the model's parameters (the model's own maximum in
    `model_info` is not what Ollama loads: without num_ctx it loads 4096 tokens, or its setting)."""
    parameters = _dict(payload).get("parameters")
    for line in parameters.splitlines() if isinstance(parameters, str) else []:
        name, _, value = line.strip().partition(" ")
        if name == "num_ctx" and value.strip().isdigit() and int(value) > 0:
            return Window(int(value), f"Ollama /api/show: num_ctx {int(value)}")
    return None


#: Asks the upstream: (method, URL, JSON body) → the parsed answer, or None if it answered
#: otherwise; raises a ProxyError when it cannot be reached.
Ask = Callable[[str, str, "dict[str, Any] | None"], Awaitable[Any]]


#: The upstream's URL and model, as configured now.
Target = Callable[[], "tuple[str, str]"]


def root_of(url: str) -> str:
    """The server's root: `[upstream] url` without its trailing `/v1`."""
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def ask_upstream(ask: Ask, url: str, model: str) -> Window | None:
    """The window the upstream reports, asking each kind of server in turn; unknown if none
    does, None if the upstream could not be reached (to be asked again when it answers)."""
    root = root_of(url)
    questions: list[tuple[str, str, dict[str, Any] | None, Callable[[Any], Window | None]]] = [
        ("GET", f"{root}/props", None, from_llama_props),
        ("GET", f"{url}/models", None, lambda payload: from_models(payload, model)),
        ("GET", f"{root}/info", None, from_tgi_info),
        ("GET", f"{root}/api/ps", None, lambda payload: from_ollama_ps(payload, model)),
        ("POST", f"{root}/api/show", {"model": model}, from_ollama_show),
    ]
    for method, where, body, read in questions:
        try:
            window = read(await ask(method, where, body))
        except ProxyError:
            return None
        if window is not None:
            return window
    return NOT_REPORTED


class Windows(Learned[Window]):
    """The window in force: configured, or learned from the upstream once it answers, and again
    after it was unreachable (a restarted model server may serve another context)."""

    def __init__(self, setting: int | None, ask: Ask, target: Target, tasks: SharedTasks) -> None:
        super().__init__(configured(setting), UNLEARNED, tasks)
        self._ask_upstream = ask
        self._target = target

    async def _ask(self) -> Window | None:
        url, model = self._target()
        learned = await ask_upstream(self._ask_upstream, url, model)
        if learned is not None:
            log.info("upstream context window: %s", learned.describe())
        return learned
