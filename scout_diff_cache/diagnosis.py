"""Where a prompt's cached prefix ended, and why: a pure function of what the proxy sent, what an
earlier request (or the warm-up) sent, and the cached tokens the upstream reported.

A prompt is told as elements in the order the upstream renders them, each in a region: the
snapshot, the working diff, the client's system prompt and tools, its earlier history, its new turn. Each element is compared byte
for byte with the earlier prompt's element at the same place (the snapshot by its commit: both
sides are the same bytes when the commits are). The first that differs is where the prefix could
stop being reused; the upstream's cached tokens say where it did. Token positions are estimated
from byte positions, in proportion to the prompt's reported tokens: the diagnosis names regions,
not exact tokens, and a template may render the tools elsewhere than after the system text.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

#: The regions in the order they stand in the prompt, and their names on the page and in the log.
REGIONS = {
    "snapshot": "snapshot",
    "diff": "working diff",
    "system": "system prompt and tools",
    "history": "earlier history",
    "turn": "new turn",
}
#: Tokens an upstream may leave uncached where its cache is kept in blocks (vLLM: 16 tokens on a
#: GPU, 128 on CPU) or where a token straddles the end of the shared bytes: no break below this.
SLACK_TOKENS = 128

#: Few bytes of the text at `offset` of encoded `data` (redacted), for the page; never for the log.
Excerpt = Callable[[bytes, int], str]
#: The proxy's own regions: a change there is a break whatever the earlier prompt was.
CONTEXT_REGIONS = ("snapshot", "diff")


@attrs.frozen
class Element:
    """One message, system block or tool list of a prompt, as the upstream got it."""

    region: str
    #: What the page and the log call it: "snapshot", "working diff", "system[0]", "tools", "messages[3]".
    label: str
    #: What is compared: the encoded bytes, or for an opaque element what names them (a commit).
    data: bytes
    #: Bytes it takes in the prompt.
    size: int
    #: Compared whole, never quoted: the snapshot, by its commit.
    opaque: bool = False


@attrs.frozen
class Prompt:
    elements: tuple[Element, ...]

    @property
    def size(self) -> int:
        return sum(element.size for element in self.elements)

    def region_at(self, position: int) -> str:
        """The region holding byte `position` (the last region when it is past the end)."""
        for element in self.elements:
            if position < element.size:
                return element.region
            position -= element.size
        return self.elements[-1].region if self.elements else "turn"


@attrs.frozen
class Earlier:
    """The prompt a request is compared with, and what it was."""

    prompt: Prompt
    #: As the explanation names it: "the warm-up", "this client's previous request (10:02:03)".
    name: str
    #: The same client's, on the same API: a change in the client's own part is then a break (the
    #: client's part of another client's prompt, or of the warm-up, was never this one's to reuse).
    own: bool = False


@attrs.frozen
class Divergence:
    """Where two prompts stop being the same bytes."""

    #: Bytes both prompts share from the start.
    shared: int
    #: Bytes after that which the earlier prompt had too, in the same place: what the change made
    #: the upstream compute again.
    lost: int = 0
    #: The element of the new prompt that differs (None: one prompt is the start of the other).
    label: str | None = None
    region: str | None = None
    #: Where in that element it differs (None for an opaque one, or one missing on a side).
    offset: int | None = None
    before: str = ""
    now: str = ""


def _common(a: bytes, b: bytes, block: int = 4096) -> int:
    """The length of the longest common prefix of two byte strings (block by block, then byte by byte)."""
    end = min(len(a), len(b))
    start = 0
    while start + block <= end and a[start : start + block] == b[start : start + block]:
        start += block
    while start < end and a[start] == b[start]:
        start += 1
    return start


def diverge(sent: Prompt, earlier: Prompt, excerpt: Excerpt) -> Divergence:
    """Where `sent` stops matching `earlier`, with a few (redacted) bytes of each side there."""
    shared = 0
    pairs = list(zip(sent.elements, earlier.elements, strict=False))
    for index, (new, old) in enumerate(pairs):
        if new.label == old.label and new.data == old.data:
            shared += new.size
            continue
        after = sum(a.size for a, b in pairs[index + 1 :] if a.label == b.label and a.data == b.data)
        if new.opaque or old.opaque or new.label != old.label:
            return Divergence(shared, after, new.label, new.region)
        offset = _common(new.data, old.data)
        before, now = excerpt(old.data, offset), excerpt(new.data, offset)
        return Divergence(shared + offset, after + new.size - offset, new.label, new.region, offset, before, now)
    return Divergence(shared)


@attrs.frozen
class Diagnosis:
    """One request's prompt, cached and not, and where and why its cached prefix ended."""

    prompt_tokens: int | None
    cached_tokens: int | None
    #: Tokens the upstream was expected to hold: the prefix shared with the closest earlier
    #: prompt, and after a change what the earlier prompt had in the same place.
    expected_tokens: int
    #: Where the cached prefix ended (None: the upstream reported no cached tokens).
    region: str | None
    #: "new" (nothing earlier to reuse), "hit" (cached as expected), "changed" (the prompt differs
    #: from the earlier one before its new turn), "cold" (the upstream recomputed what it was
    #: expected to hold), "unknown" (no cache figures).
    cause: str
    #: The differing element ("system[0]"), its region and the byte in it (page and log).
    label: str | None = None
    broke: str | None = None
    offset: int | None = None
    #: What the earlier prompt was ("the warm-up", "this client's previous request"...).
    against: str = ""
    before: str = ""
    now: str = ""

    @property
    def is_break(self) -> bool:
        return self.cause in ("changed", "cold")

    def split(self) -> tuple[int, int, int]:
        """The prompt's tokens as (cached, expected but recomputed, new)."""
        prompt = self.prompt_tokens or 0
        cached = min(self.cached_tokens or 0, prompt)
        recomputed = min(max(0, self.expected_tokens - cached), prompt - cached)
        return cached, recomputed, prompt - cached - recomputed

    def explain(self) -> str:
        """One sentence without message contents: for the log line, /health and the terminal."""
        where = f"cached to the {REGIONS[self.region]}" if self.region else "no cached tokens reported"
        if self.cause == "changed":
            at = f" at byte {self.offset}" if self.offset is not None else ""
            cost = f": {self.split()[1]:,} tokens computed again" if self.prompt_tokens else ""
            return f"{self.label} differs from {self.against}{at}{cost}; {where}"
        if self.cause == "cold":
            return f"the upstream computed {self.split()[1]:,} tokens again that it was expected to hold; {where}"
        if self.cause == "hit":
            return f"as expected: {where}"
        if self.cause == "new":
            return f"nothing earlier to reuse: {where}"
        return "the upstream reported no cached tokens"

    def describe(self) -> str:
        """Its part of the request's log line."""
        parts = [f"prefix={self.cause}", f"cached_to={self.region or 'unknown'}"]
        if self.is_break:
            parts.append(f"break={self.broke}")
        if self.cause == "changed":
            parts.append(f"differs={self.label}" + (f"@{self.offset}" if self.offset is not None else ""))
        return " ".join(parts)


def tokens_at(position: int, prompt: Prompt, prompt_tokens: int) -> int:
    """The tokens before byte `position`, estimated in proportion to the whole prompt's."""
    return round(prompt_tokens * position / prompt.size) if prompt.size else 0


def diagnose(
    sent: Prompt, earlier: Earlier | None, prompt_tokens: int | None, cached_tokens: int | None, excerpt: Excerpt
) -> Diagnosis:
    """Where `sent`'s cached prefix ended and why, given the closest `earlier` prompt and the
    upstream's figures."""
    found = diverge(sent, earlier.prompt, excerpt) if earlier is not None else Divergence(0)
    changed = (
        earlier is not None
        and found.region in (*CONTEXT_REGIONS, "system", "history")
        and (earlier.own or found.region in CONTEXT_REGIONS)
        and found.lost > 0
    )
    shared = tokens_at(found.shared, sent, prompt_tokens or 0)
    expected = tokens_at(found.shared + (found.lost if changed else 0), sent, prompt_tokens or 0)
    region = None
    if cached_tokens is not None and prompt_tokens:
        region = sent.region_at(cached_tokens * sent.size // prompt_tokens)
    if cached_tokens is None or not prompt_tokens:
        cause = "changed" if changed else "unknown"
    elif shared - cached_tokens > SLACK_TOKENS:
        cause = "cold"
    elif changed:
        cause = "changed"
    else:
        cause = "hit" if earlier is not None and expected else "new"
    broke = found.region if cause == "changed" else region if cause == "cold" else None
    against = earlier.name if earlier is not None else ""
    return Diagnosis(
        prompt_tokens,
        cached_tokens,
        expected,
        region,
        cause,
        found.label if changed else None,
        broke,
        found.offset if changed else None,
        against,
        found.before if changed else "",
        found.now if changed else "",
    )
