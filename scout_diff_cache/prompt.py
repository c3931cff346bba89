"""Assembling the upstream body: [snapshot][working diff][client messages], from encoded parts.

The snapshot arrives already JSON-encoded (once per snapshot); per request only the diff, the
client's messages and its other fields are encoded, and the body goes out as a list of chunks
with a known length, so a 50 MB snapshot is never copied or re-serialised per request.
"""

from __future__ import annotations

import json
from typing import Any

import attrs


def encode_json(value: Any) -> bytes:
    """The one JSON encoding used for every byte we send, so equal text gives equal bytes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: How a system message's encoding opens and closes around its content.
SYSTEM_OPEN = b'{"role":"system","content":"'
SYSTEM_CLOSE = b'"}'

#: An encoded message: in one piece, or as chunks (a snapshot's) that are sent one after another.
Encoded = bytes | tuple[bytes, ...]


def system_message(*parts: str) -> bytes:
    """A system message whose content is one string: the parts joined (Llama 4 renders only a
    list's first part). Encoded part by part, the same bytes as encoding the joined text, so that
    a large message never holds the GIL (and so the event loop) for one long call."""
    encoded = [encode_json(part)[1:-1] for part in parts]
    return SYSTEM_OPEN + b"".join(encoded) + SYSTEM_CLOSE


@attrs.frozen
class Body:
    chunks: tuple[bytes, ...]

    @property
    def length(self) -> int:
        return sum(map(len, self.chunks))


def assemble(messages: bytes, fields: bytes, *injected: Encoded) -> Body:
    """A chat body: the `injected` messages (encoded), then the client's `messages` (encoded, without
    their brackets), then its other `fields` (encoded, without their braces)."""
    chunks = [b'{"messages":[']
    for message in injected:
        chunks += [message] if isinstance(message, bytes) else message
        chunks.append(b",")
    chunks += [messages, b"]"]
    if fields:
        chunks += [b",", fields]
    chunks.append(b"}")
    return Body(tuple(chunks))
