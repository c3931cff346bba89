"""What each exchange cost and how much of it the upstream served from its cache.

A field the upstream does not report stays None ("unknown"), never 0: vLLM reports cached tokens
only with --enable-prompt-tokens-details, and some versions not at all.
"""

from __future__ import annotations

import attrs

from .diagnosis import Diagnosis, Prompt
from .usage import Usage


@attrs.define
class Totals:
    """Running sums since start, for the metrics endpoint."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    snapshot_tokens: float = 0.0
    snapshot_tokens_cached: float = 0.0
    #: Prompt and cached tokens by the API the requests came in on.
    by_api: dict[str, list[int]] = attrs.Factory(dict)

    def add(self, exchange: Exchange) -> None:
        self.requests += 1
        usage = exchange.usage
        if usage is None or usage.prompt_tokens is None or usage.cached_tokens is None:
            return
        self.prompt_tokens += usage.prompt_tokens
        self.cached_tokens += usage.cached_tokens
        api = self.by_api.setdefault(exchange.api or "other", [0, 0])
        api[0] += usage.prompt_tokens
        api[1] += usage.cached_tokens
        expected = exchange.expected_snapshot_tokens()
        if expected:
            self.snapshot_tokens += expected
            self.snapshot_tokens_cached += min(usage.cached_tokens, expected)


@attrs.define
class Exchange:
    """The per-request record behind the one log line each request gets."""

    #: The API the request came in on (chat, responses, messages), if it was one of them.
    api: str | None = None
    snapshot_commit: str | None = None
    snapshot_bytes: int = 0
    diff_bytes: int = 0
    #: The client's messages as encoded (close to their text's size).
    client_bytes: int = 0
    #: Bytes of text the proxy put in: snapshot, working diff, and the changes inserted in a conversation.
    injected_bytes: int = 0
    #: The snapshot's tokens as the upstream counted them (None: not counted).
    snapshot_tokens: int | None = None
    stream: bool = False
    #: A request that went (or tried to go) upstream: its outcome tells how the upstream is.
    to_upstream: bool = False
    #: What the request did to its conversation (new, continued, afresh), or "off".
    conversation: str | None = None
    usage: Usage | None = None
    first_byte_seconds: float | None = None
    outcome: str = "ok"
    #: What went upstream, as the diagnosis reads it, and whose it was (a key's name, never the key).
    sent: Prompt | None = None
    client: str = ""
    #: Where its cached prefix ended, and why (once the answer is in).
    diagnosis: Diagnosis | None = None

    @property
    def sent_bytes(self) -> int:
        """Bytes of text in the prompt: what the proxy put in and the client's messages."""
        return self.injected_bytes + self.client_bytes

    def expected_snapshot_tokens(self) -> float | None:
        """The snapshot's share of the prompt tokens, estimated by its share of the bytes."""
        total = self.snapshot_bytes + self.diff_bytes + self.client_bytes
        if self.usage is None or self.usage.prompt_tokens is None or not self.snapshot_bytes:
            return None
        return self.usage.prompt_tokens * self.snapshot_bytes / total

    def describe(self) -> str:
        parts = (
            [f"outcome={self.outcome}"]
            + ([f"api={self.api}"] if self.api else [])
            + (["stream"] if self.stream else [])
        )
        if self.snapshot_bytes:
            parts.append(f"snapshot={(self.snapshot_commit or 'none')[:12]} injected={self.injected_bytes}")
        if self.conversation:
            parts.append(f"conversation={self.conversation}")
        if self.usage is not None:
            parts.append(
                f"prompt_tokens={_known(self.usage.prompt_tokens)} cached_tokens={_known(self.usage.cached_tokens)}"
            )
            expected = self.expected_snapshot_tokens()
            if expected and self.usage.cached_tokens is not None:
                parts.append(f"snapshot_cached={min(1.0, self.usage.cached_tokens / expected):.0%}")
        if self.diagnosis is not None:
            parts.append(self.diagnosis.describe())
        return " ".join(parts)


def _known(value: int | None) -> str:
    return "unknown" if value is None else str(value)
