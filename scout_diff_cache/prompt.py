"""Assembling the upstream body: [snapshot][working diff][client messages], from encoded parts.

The snapshot arrives already JSON-encoded (once per snapshot); per request only the diff, the
client's messages and its other fields are encoded, and the body goes out as a list of chunks
with a known length, so a 50 MB snapshot is never copied or re-serialised per request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .validation import ChatRequest


def encode_json(value: Any) -> bytes:
    """The one JSON encoding used for every byte we send, so equal text gives equal bytes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def system_message(text: str) -> bytes:
    """A system message whose content is one string (Llama 4 renders only a list's first part)."""
    return encode_json({"role": "system", "content": text})


@attrs.frozen
class Body:
    chunks: tuple[bytes, ...]

    @property
    def length(self) -> int:
        return sum(map(len, self.chunks))


def assemble(chat: ChatRequest, snapshot_message: bytes, diff_message: bytes) -> Body:
    """The client's body with the two context messages spliced in front of its own messages."""
    chunks = [b'{"messages":[', snapshot_message, b",", diff_message, b",", chat.messages, b"]"]
    if chat.fields:
        chunks += [b",", chat.fields]
    chunks.append(b"}")
    return Body(tuple(chunks))
