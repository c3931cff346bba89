"""Tokens of each piece of the snapshot, as the upstream's own tokenizer counts them.

Fitting the snapshot to the window needs every file's tokens, in the upstream's tokens: bytes say
little (code runs 2.5 to 4.5 bytes a token, text more). The server's `POST /tokenize` counts one
file's section at a time, so each count is paid once per content (a rebase asks only for the files
it changed) and never per request: counts are kept by a digest of the text, per upstream URL and
model (another model has another tokenizer). Tokenising file by file also stays linear, where one
10M-token text is not (llama.cpp merges long spans between special tokens, see DESIGN.md).

llama.cpp takes `{"content"}` and answers `{"tokens": [...]}`; vLLM and SGLang take `{"prompt"}`
and answer with a `count` too. Which one a server speaks is found on its first answer. A server
without `/tokenize` (TGI's differs, Ollama has none) gets estimates: the bytes at the rate the last
warm-up measured, or a cautious 3 bytes a token before any; the warm-up then checks the fit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs

from ..errors import ProxyError

log = logging.getLogger("scout_diff_cache")

#: A text JSON-encoded without its quotes, as the snapshot keeps it.
Encoded = bytes | memoryview

#: Asks the upstream's `/tokenize` with a JSON body (encoded): its status and answer.
Tokenize = Callable[[bytes], Awaitable[tuple[int, bytes]]]

#: The bodies servers take, around the text as the snapshot holds it (JSON-encoded already: a large
#: file is never encoded on the event loop), tried in this order on the first count (vLLM refuses
#: llama.cpp's, not the other way round: llama.cpp counts a missing `content` as empty).
DIALECTS = (
    (b'{"add_special":false,"content":"', b'"}'),
    (b'{"add_special_tokens":false,"prompt":"', b'"}'),
)

#: Texts counted at once: enough to keep the server busy, few enough to leave room for requests.
CONCURRENCY = 4
#: Bytes a token is taken to be worth when nothing was measured: few, so an estimate errs long.
CAUTIOUS_BYTES_PER_TOKEN = 3.0
#: Counts kept per upstream (about 40 bytes each): a very large repository and a few rebases.
KEPT = 1 << 20


@attrs.frozen
class Counted:
    tokens: tuple[int, ...]
    #: True when every count is the upstream's own; False when some are estimates from bytes.
    exact: bool


class UpstreamCounts:
    """One upstream's counts by text digest, and which body its `/tokenize` takes."""

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        #: Index into DIALECTS once known; None before the first answer; -1: no /tokenize.
        self.dialect: int | None = None

    def keep(self, key: bytes, tokens: int) -> None:
        self.counts[key] = tokens
        if len(self.counts) > KEPT:  # the oldest half goes: files long since changed
            for old in list(self.counts)[: KEPT // 2]:
                del self.counts[old]


class TokenCounter:
    """Counts texts with the upstream's tokenizer, each content once per upstream."""

    def __init__(self, tokenize: Tokenize) -> None:
        self._tokenize = tokenize
        self._upstreams: dict[tuple[str, str], UpstreamCounts] = {}

    def of(self, url: str, model: str) -> UpstreamCounts:
        return self._upstreams.setdefault((url, model), UpstreamCounts())

    def bound(self, url: str, model: str, rate: float | None) -> Bound:
        return Bound(self, self.of(url, model), rate)

    async def count(
        self,
        known: UpstreamCounts,
        keys: Sequence[bytes],
        texts: Mapping[bytes, Encoded],
        sizes: Sequence[int],
        rate: float | None,
    ) -> Counted:
        """The tokens of each text by its digest in `keys` (`texts` those not counted yet, `sizes`
        their bytes); estimated at `rate` tokens a byte (or the cautious rate) where the upstream
        cannot count."""
        todo = iter([(key, text) for key, text in texts.items() if key not in known.counts])

        async def worker() -> None:  # a few workers taking turns, not a task per text: one loop
            for key, text in todo:  # turn for thousands of tasks would stall every request
                tokens = await self._one(known, text)
                if tokens is not None:
                    known.keep(key, tokens)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        per_byte = rate or 1 / CAUTIOUS_BYTES_PER_TOKEN
        tokens = tuple(known.counts.get(key, round(size * per_byte)) for key, size in zip(keys, sizes, strict=True))
        return Counted(tokens, all(key in known.counts for key in keys))

    async def _one(self, known: UpstreamCounts, text: Encoded) -> int | None:
        """One text's tokens, or None if the upstream cannot count it."""
        if known.dialect == -1:
            return None
        for number in [known.dialect] if known.dialect is not None else range(len(DIALECTS)):
            try:
                opening, closing = DIALECTS[number]
                status, data = await self._tokenize(b"".join((opening, text, closing)))
            except ProxyError:
                return None  # unreachable: estimated this time, asked again next build
            tokens = tokens_in(data) if status < 300 else None
            if tokens is not None:
                known.dialect = number
                return tokens
        if known.dialect is None:
            known.dialect = -1
            log.info("the upstream has no /tokenize the proxy can use: file tokens are estimated from bytes")
        return None


#: llama.cpp's answer without pieces: a list of ids and nothing else, countable by its commas.
IDS_ONLY = re.compile(rb'\s*\{\s*"tokens"\s*:\s*\[([\d,\s]*)\]\s*\}\s*')

#: vLLM's and SGLang's answer says its count before or after the list of ids.
COUNT = re.compile(rb'"count"\s*:\s*(\d+)')


def tokens_in(data: bytes) -> int | None:
    """The count in a `/tokenize` answer: `count` (vLLM, SGLang) or the length of `tokens`. A
    large file's answer lists a million ids; parsing them (even in a thread, which holds the GIL
    all the while) would stall every request, so a plain list is counted by its commas instead."""
    if (listed := IDS_ONLY.fullmatch(data)) is not None:
        return listed[1].count(b",") + 1 if listed[1].strip() else 0
    if (counted := COUNT.search(data)) is not None:
        return int(counted[1])
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    count, tokens = answer.get("count"), answer.get("tokens")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return len(tokens) if isinstance(tokens, list) else None


@attrs.frozen
class Bound:
    """The counts of one upstream, at the rate its warm-ups measured: what a fit asks (see
    `context/fitting.py`)."""

    counter: TokenCounter
    known: UpstreamCounts
    rate: float | None

    async def unknown(self, keys: Sequence[bytes]) -> set[bytes]:
        return {key for key in keys if key not in self.known.counts}

    async def count(
        self, keys: Sequence[bytes], texts: Mapping[bytes, Encoded], sizes: Sequence[int]
    ) -> tuple[Sequence[int], bool]:
        counted = await self.counter.count(self.known, keys, texts, sizes, self.rate)
        return counted.tokens, counted.exact
