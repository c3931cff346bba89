"""Whether an upstream's refusal means "the prompt is longer than my window", in whichever words
the server says it: llama.cpp's `exceed_context_size_error` (with `n_prompt_tokens` and `n_ctx`),
vLLM's and SGLang's "maximum context length", or an OpenAI- or Anthropic-compatible upstream's
own `context_length_exceeded` and "prompt is too long". One pure function of the answer, so the
rule is in one place and tested on each server's recorded body.
"""

from __future__ import annotations

import re

from ..errors import ContextTooLong

OVERFLOW_TYPES = frozenset({"exceed_context_size_error"})
OVERFLOW_CODES = frozenset({"context_length_exceeded"})
OVERFLOW_TEXT = re.compile(
    r"maximum context length|exceeds the available context size|larger than the max context size"
    r"|^prompt is too long",
    re.IGNORECASE,
)
#: llama.cpp: "request (N tokens) exceeds the available context size (M tokens)", "input (N tokens)
#: is larger than the max context size (M tokens)"; Anthropic: "prompt is too long: N tokens > M maximum".
BOTH = (
    re.compile(r"\((\d+) tokens\) (?:exceeds the available|is larger than the max) context size \((\d+) tokens\)"),
    re.compile(r"prompt is too long: (\d+) tokens > (\d+) maximum", re.IGNORECASE),
)
#: vLLM and SGLang: the window first, then the first count of tokens after it (the prompt, or the
#: prompt and the answer's room, as the server counted them).
WINDOW = re.compile(r"maximum context length (?:is |of )?(\d+)", re.IGNORECASE)
TOKENS_AFTER = re.compile(r"(\d+) (?:input )?tokens")


def context_too_long(status: int, payload: object) -> ContextTooLong | None:
    """The overflow a 4xx answer's parsed JSON body reports, or None if it reports something else."""
    if not 400 <= status < 500 or not isinstance(payload, dict):
        return None
    error = payload.get("error")
    fields = error if isinstance(error, dict) else payload
    message = fields.get("message")
    message = message if isinstance(message, str) else ""
    if not (
        fields.get("type") in OVERFLOW_TYPES or fields.get("code") in OVERFLOW_CODES or OVERFLOW_TEXT.search(message)
    ):
        return None
    tokens, window = _figures(message)
    tokens = _count(fields.get("n_prompt_tokens")) or tokens
    window = _count(fields.get("n_ctx")) or window
    if tokens is not None and window is not None and tokens <= window:
        tokens = None  # not an overshoot of the window (vLLM's room for the answer): no "N > M"
    return ContextTooLong(message or "the prompt is longer than the model's context window", tokens, window)


def _figures(message: str) -> tuple[int | None, int | None]:
    """(tokens, window) as the message states them."""
    for pattern in BOTH:
        if found := pattern.search(message):
            return int(found[1]), int(found[2])
    if window := WINDOW.search(message):
        tokens = TOKENS_AFTER.search(message, window.end())
        return (int(tokens[1]) if tokens else None), int(window[1])
    return None, None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
