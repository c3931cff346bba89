"""Which /v1 requests the pass-through forwards, decided on the path as it came, before decoding.

A model server serves more than inference on the same port, with the proxy's upstream key
accepted everywhere: llama.cpp erases and restores slots, SGLang flushes its cache, vLLM loads
adapters. So a client reaches only the inference routes listed here (and those `[upstream]
passthrough_routes` adds), and only by a path in which nothing can be decoded, or normalised by a
URL join, into another path: `/v1/%2e%2e/flush_cache` must not become `/flush_cache`.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest, NotFound

#: Inference routes that OpenAI-compatible servers (vLLM, SGLang, llama.cpp) serve under /v1.
#: Each entry matches itself and the routes below it, whole segments only.
DEFAULT_ROUTES = (
    "completions",
    "embeddings",
    "tokenize",
    "detokenize",
    "rerank",
    "reranking",
    "score",
    "classify",
    "pooling",
    "moderations",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
)

PREFIX = "/v1/"

#: What a segment may hold: RFC 3986's unreserved characters, which no server decodes into others.
SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
ALLOWED = "letters, digits, '-', '.', '_' and '~' between single slashes"


def segments(path: str) -> tuple[str, ...]:
    """The segments of a raw relative path; ValueError saying what would let it mean another path."""
    parts = tuple(path.split("/"))
    for part in parts:
        if not part:
            raise ValueError("an empty segment (a leading, doubled or trailing '/')")
        if part in (".", ".."):
            raise ValueError(f"a {part!r} segment")
        if not SEGMENT.fullmatch(part):
            odd = next(char for char in part if not SEGMENT.fullmatch(char))
            raise ValueError(f"{odd!r} in {part!r}" + (" (percent-encoding)" if odd == "%" else ""))
    return parts


def is_listed(route: str, listed: tuple[str, ...]) -> bool:
    return any(route == entry or route.startswith(f"{entry}/") for entry in listed)


def forwarded(raw_path: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The checked segments under /v1 of a request the pass-through may forward.

    `raw_path` is the path as it came, still percent-encoded. A path that could mean another one
    is refused (400); a route neither built in nor in `extra` is not found (404).
    """
    if not raw_path.startswith(PREFIX):
        raise NotFound(f"{raw_path} is not under {PREFIX}")
    try:
        checked = segments(raw_path[len(PREFIX) :])
    except ValueError as error:
        raise InvalidRequest(f"the path {raw_path} is refused: it has {error}; allowed are {ALLOWED}") from None
    if not is_listed("/".join(checked), DEFAULT_ROUTES + extra):
        raise NotFound(
            f"{raw_path} is not a route the proxy serves or passes on; it passes on /v1/ followed by "
            f"{', '.join(DEFAULT_ROUTES + extra)}, or a route below one of them"
        )
    return checked
