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


def system_message(*parts: str) -> bytes:
    """A system message whose content is one string: the parts joined (Llama 4 renders only a
    list's first part). Encoded part by part, the same bytes as encoding the joined text, so that
    a 50 MB snapshot never holds the GIL (and so the event loop) for one long call."""
    encoded = [encode_json(part)[1:-1] for part in parts]
    return b'{"role":"system","content":"' + b"".join(encoded) + b'"}'


@attrs.frozen
class Body:
    chunks: tuple[bytes, ...]

    @property
    def length(self) -> int:
        return sum(map(len, self.chunks))


def assemble(messages: bytes, fields: bytes, *injected: bytes) -> Body:
    """A chat body: the `injected` messages (encoded), then the client's `messages` (encoded, without
    their brackets), then its other `fields` (encoded, without their braces)."""
    chunks = [b'{"messages":[', *(part for message in injected for part in (message, b",")), messages, b"]"]
    if fields:
        chunks += [b",", fields]
    chunks.append(b"}")
    return Body(tuple(chunks))
