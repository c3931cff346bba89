"""The client dialects: what differs between the APIs clients speak, as one small interface.

A `Dialect` travels with the request it came in on, from the route to the relay, the usage and
the error envelope; nothing else asks which API is calling (its `name` is only a label, for
metrics, logs and conversation scopes). One module per dialect: `chat`, `responses`, `messages`.

A change is placed at a point `insertion_point` chose: "before" a message, as a message of its
own (`separate`: a system message in chat, a system item in Responses), or attached to a
message's text, "open" (at its start) or "close" (at its end).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..encoding import Body, Chunk
from ..errors import ProxyError
from ..usage import Usage
from .chat import CHAT
from .messages import MESSAGES
from .responses import RESPONSES
from .validation import ClientRequest, RequestRules

__all__ = ["CHAT", "MESSAGES", "RESPONSES", "Dialect"]


class Dialect(Protocol):
    """One client API: its body in, the upstream body out, its usage and its errors."""

    @property
    def name(self) -> str:
        """chat, responses or messages: a label only."""

    @property
    def path(self) -> str:
        """Where the upstream serves it, under its base URL."""

    def parse(self, raw: bytes, rules: RequestRules) -> ClientRequest:
        """The client's body checked and encoded; InvalidRequest names what is wrong."""

    def placement(self, configured: str) -> str:
        """Where changes go for this API: as configured, or attached where no system turn may stand."""

    def separate(self, text: str) -> bytes:
        """A change as a message of its own, encoded."""

    def opened(self, part: bytes, lead: bytes) -> bytes:
        """The message `part` with the encoded text `lead` at the start of its content."""

    def closed(self, part: bytes, tail: bytes) -> bytes:
        """The message `part` with the encoded text `tail` at the end of its content."""

    def body(
        self,
        request: ClientRequest,
        parts: tuple[bytes, ...],
        snapshot: tuple[Chunk, ...],
        start: bytes,
        strict: bool = False,
    ) -> Body:
        """The upstream body: the snapshot's encoded text first, the working diff's `start`, then the
        client's `parts`; `strict`: one system text (see `upstream/layout.py`)."""

    def read_usage(self, payload: Any) -> Usage | None:
        """The prompt and cache figures of an answer or a streamed event, if it carries any."""

    def take_out(self, usage: dict[str, Any], injected: int) -> None:
        """Remove `injected` prompt tokens from a usage object, in place; no figure below zero."""

    def error_body(self, error: ProxyError) -> bytes:
        """The error in this API's envelope."""

    def error_event(self, error: ProxyError) -> bytes:
        """The error as the SSE event this API's streaming clients expect, once the stream began."""
