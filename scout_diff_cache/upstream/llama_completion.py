"""llama.cpp's `/completion` answering a chat completions request: the prompt as `[ids…, "tail"]`,
the answer given back in Chat Completions' own format.

The chat endpoint renders the template over the whole prompt and tokenises it on every request;
`/completion` takes the snapshot's ids as they are and tokenises only the tail. What it cannot do
is parse the answer (tool calls, reasoning), so only requests that need no parser come here, and
only fields it takes (the sampling ones) or that shape the rendering alone (see `text_reason`).
Its answer carries no prompt (`response_fields` keeps only what the chat answer is made of).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from ..encoding import Body, Chunk, encode_json

#: Chat fields `/completion` takes under another name.
RENAMED = {"max_tokens": "n_predict", "max_completion_tokens": "n_predict"}
#: Chat fields (llama.cpp's sampling extensions included) that `/completion` takes as they are.
SAMPLING = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "repeat_last_n",
        "dynatemp_range",
        "dynatemp_exponent",
        "xtc_probability",
        "xtc_threshold",
        "top_n_sigma",
        "id_slot",
    }
)
#: Fields that only shape the rendering or the envelope: used here, not sent to `/completion`.
SHAPING = frozenset({"model", "stream", "stream_options", "chat_template_kwargs", "cache_salt", "user"})
#: Fields whose answer needs the chat endpoint's parser.
TOOLS = frozenset({"tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"})
#: What a `/completion` answer keeps: no prompt (it would echo the whole snapshot back).
RESPONSE_FIELDS = ("content", "stop", "stop_type", "tokens_evaluated", "tokens_predicted", "timings", "truncated")
#: llama.cpp's stop types as chat's finish reasons.
FINISH = {"limit": "length", "eos": "stop", "word": "stop"}


def text_reason(fields: dict[str, Any]) -> str | None:
    """Why a chat request's fields must go by text (None: `/completion` can serve it): tools need
    the chat parser; another field (`response_format`, `logprobs`, `n` > 1...) has no mapping here."""
    if any(fields.get(name) for name in TOOLS):
        return "tools"
    for name, value in fields.items():
        if name == "n" and value in (1, None):
            continue
        if name not in RENAMED and name not in SAMPLING and name not in SHAPING and name not in TOOLS:
            return "unmapped field"
    return None


def completion_body(ids: tuple[Chunk, ...], tail: str, fields: dict[str, Any]) -> Body:
    """The `/completion` body: the snapshot's ids (their JSON, spliced), the tail as text, the
    sampling fields mapped, the prompt cached, and no prompt echoed back."""
    mapped: dict[str, Any] = {RENAMED.get(name, name): value for name, value in fields.items() if name in RENAMED}
    mapped.update({name: value for name, value in fields.items() if name in SAMPLING})
    if isinstance(mapped.get("stop"), str):
        mapped["stop"] = [mapped["stop"]]
    mapped.update(
        stream=bool(fields.get("stream")), cache_prompt=True, response_fields=list(RESPONSE_FIELDS), return_tokens=False
    )
    return Body((b'{"prompt":[', *ids, b",", encode_json(tail), b"],", encode_json(mapped)[1:]))


def chat_usage(payload: dict[str, Any]) -> dict[str, Any] | None:
    """Chat's usage from a `/completion` result: `tokens_evaluated` is the prompt, `timings.cache_n`
    its cached part, `tokens_predicted` the answer."""
    prompt = payload.get("tokens_evaluated")
    if not isinstance(prompt, int):
        return None
    found = payload.get("timings")
    timings: dict[str, Any] = found if isinstance(found, dict) else {}
    completion = payload.get("tokens_predicted", timings.get("predicted_n", 0))
    completion = completion if isinstance(completion, int) else 0
    usage: dict[str, Any] = {"completion_tokens": completion, "prompt_tokens": prompt}
    usage["total_tokens"] = prompt + completion
    if isinstance(timings.get("cache_n"), int):
        usage["prompt_tokens_details"] = {"cached_tokens": timings["cache_n"]}
    return usage


class ChatFromCompletion:
    """One answer's translation: its id, model and time, as a chat answer would carry them."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{secrets.token_hex(16)}"
        self.created = int(time.time())
        self._opened = False
        self._tail = b""

    def _envelope(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {**fields, "created": self.created, "id": self.id, "model": self.model, "object": kind}

    def answer(self, payload: Any) -> Any:
        """A whole `/completion` result as a `chat.completion` (an error passes as it came)."""
        if not isinstance(payload, dict) or "error" in payload:
            return payload
        message = {"role": "assistant", "content": payload.get("content", "")}
        choice = {"finish_reason": FINISH.get(payload.get("stop_type", ""), "stop"), "index": 0, "message": message}
        answer = self._envelope("chat.completion", choices=[choice])
        if (usage := chat_usage(payload)) is not None:
            answer["usage"] = usage
        if "timings" in payload:
            answer["timings"] = payload["timings"]
        return answer

    def feed(self, chunk: bytes) -> bytes:
        """`/completion` SSE events as they come, turned into `chat.completion.chunk` events."""
        data = self._tail + chunk
        cut = data.rfind(b"\n\n") + 2 if b"\n\n" in data else 0
        complete, self._tail = data[:cut], data[cut:]
        return b"".join(self._event(event) for event in complete.split(b"\n\n") if event.strip())

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return self._event(rest) if rest.strip() else b""

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data:"):
            return event + b"\n\n"
        try:
            payload = json.loads(event[5:])
        except ValueError:
            return event + b"\n\n"
        if not isinstance(payload, dict) or "error" in payload:
            return event + b"\n\n"
        out: list[dict[str, Any]] = []
        if not self._opened:
            self._opened = True
            out.append(self._chunk({"role": "assistant", "content": None}))
        if payload.get("content"):
            out.append(self._chunk({"content": payload["content"]}))
        if payload.get("stop"):
            out.append(self._chunk({}, FINISH.get(payload.get("stop_type", ""), "stop")))
            final = self._envelope("chat.completion.chunk", choices=[], usage=chat_usage(payload))
            if "timings" in payload:
                final["timings"] = payload["timings"]
            out.append(final)
        events = b"".join(b"data: " + encode_json(item) + b"\n\n" for item in out)
        return events + (b"data: [DONE]\n\n" if payload.get("stop") else b"")

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"finish_reason": finish, "index": 0, "delta": delta}
        return self._envelope("chat.completion.chunk", choices=[choice])
