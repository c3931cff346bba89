"""The one JSON encoding of every byte the proxy sends, and the body as chunks with a known length.

A snapshot is encoded once per snapshot; per request only what is new is encoded, and the body
goes out as a list of chunks, so tens of megabytes are never copied or re-serialised per request.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs


def encode_json(value: Any) -> bytes:
    """The one JSON encoding used for every byte we send, so equal text gives equal bytes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: Control characters other than line feed and tab: rare in text, escaped by `json` as it does.
_RARE_CONTROLS = bytes(code for code in range(32) if code not in (9, 10))


def encode_text(text: str) -> bytes:
    """`encode_json(text)` without its quotes, byte for byte; a few times faster on source text:
    when the only characters to escape are quotes, backslashes, line feeds and tabs, `bytes.replace`
    does it (a snapshot is tens of megabytes of such text)."""
    data = text.encode("utf-8")
    if len(data.translate(None, _RARE_CONTROLS)) != len(data):
        return encode_json(text)[1:-1]
    return data.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n").replace(b"\t", b"\\t")


Chunk = bytes | memoryview

#: An encoded message: in one piece, or as chunks (a snapshot's) that are sent one after another.
Encoded = bytes | tuple[Chunk, ...]


@attrs.frozen
class Body:
    chunks: tuple[Chunk, ...]

    @property
    def length(self) -> int:
        return sum(map(len, self.chunks))


def digest(encoded: bytes | memoryview) -> bytes:
    """A short digest of an encoded text: what identifies a content whose tokens were counted."""
    return hashlib.blake2b(encoded, digest_size=16).digest()
