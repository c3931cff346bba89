"""Assembling the upstream body: [snapshot][working diff][client messages], from encoded parts.

The snapshot arrives already JSON-encoded (once per snapshot); per request only the diff, the
client's messages and its other fields are encoded, and the body goes out as a list of chunks
with a known length, so a 50 MB snapshot is never copied or re-serialised per request.

Each API puts the snapshot where its upstream renders it first:
- chat completions: the first system message, the working diff the second, then the client's;
- Responses: `instructions` (rendered before any input) holds the snapshot, then after a blank
  line the client's own instructions; the working diff is a system item opening `input`;
- Messages: `system` is a list whose first block is the whole snapshot, the client's system
  blocks following untouched (upstreams join the blocks into one system message; Llama 4's
  template, given a list, renders only its first part); the working diff opens the first message.
So the client's stable parts (instructions, system prompt, tools) stay ahead of the volatile diff.
For strict templates (see `layout.py`) chat and Responses carry one system text instead: the
snapshot, the working diff, then the client's own system text.
"""

from __future__ import annotations

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


#: How a system message's encoding opens and closes around its content.
SYSTEM_OPEN = b'{"role":"system","content":"'
SYSTEM_CLOSE = b'"}'

Chunk = bytes | memoryview

#: An encoded message: in one piece, or as chunks (a snapshot's) that are sent one after another.
Encoded = bytes | tuple[Chunk, ...]


def system_message(*parts: str) -> bytes:
    """A system message whose content is one string: the parts joined (Llama 4 renders only a
    list's first part). Encoded part by part, the same bytes as encoding the joined text, so that
    a large message never holds the GIL (and so the event loop) for one long call."""
    encoded = [encode_text(part) for part in parts]
    return SYSTEM_OPEN + b"".join(encoded) + SYSTEM_CLOSE


def system_text(message: Encoded) -> tuple[Chunk, ...]:
    """The encoded text of a message made by `system_message` (or a snapshot's chunks of one),
    without its quotes, and no copy."""
    chunks = (message,) if isinstance(message, bytes) else message
    if len(chunks) == 1:
        return (memoryview(chunks[0])[len(SYSTEM_OPEN) : len(chunks[0]) - len(SYSTEM_CLOSE)],)
    first, *middle, last = chunks
    return (memoryview(first)[len(SYSTEM_OPEN) :], *middle, memoryview(last)[: len(last) - len(SYSTEM_CLOSE)])


def joined_text(snapshot: Encoded, start: bytes, own: bytes = b"") -> tuple[Chunk, ...]:
    """The strict layout's one system text, encoded without quotes: the snapshot's, the working
    diff's, then after a blank line the client's own (`own`, encoded without quotes), if any."""
    return (*system_text(snapshot), *system_text(start), *((b"\\n", own) if own else ()))


@attrs.frozen
class Body:
    chunks: tuple[Chunk, ...]

    @property
    def length(self) -> int:
        return sum(map(len, self.chunks))


def chat_context(snapshot: Encoded, start: bytes, strict: bool, own: bytes = b"") -> tuple[Encoded, ...]:
    """The chat messages that carry the context: the snapshot and the working diff as two system
    messages, or in the strict layout one, which also holds the client's own system text `own`."""
    if strict:
        return ((SYSTEM_OPEN, *joined_text(snapshot, start, own), SYSTEM_CLOSE),)
    return (snapshot, start)


def assemble(messages: bytes, fields: bytes, *injected: Encoded) -> Body:
    """A chat body: the `injected` messages (encoded), then the client's `messages` (encoded, without
    their brackets), then its other `fields` (encoded, without their braces)."""
    chunks: list[Chunk] = [b'{"messages":[']
    for message in injected:
        chunks += [message] if isinstance(message, bytes) else message
        chunks.append(b",")
    chunks += [messages, b"]"]
    return _closed(chunks, fields)


def assemble_responses(input_items: bytes, fields: bytes, instructions: tuple[Chunk, ...], *injected: bytes) -> Body:
    """A Responses body: `instructions` (encoded text, without quotes), then `input`: the
    `injected` items, then the client's items."""
    chunks: list[Chunk] = [b'{"instructions":"', *instructions, b'","input":[']
    for item in injected:
        chunks += [item, b","]
    chunks += [input_items, b"]"]
    return _closed(chunks, fields)


def assemble_messages(messages: bytes, fields: bytes, snapshot: Encoded, system: bytes) -> Body:
    """A Messages body: `system` is the snapshot's text as the first block, then the client's
    `system` (encoded: a string becomes one text block; a list's blocks follow as they came)."""
    chunks: list[Chunk] = [b'{"system":[{"type":"text","text":"', *system_text(snapshot), b'\\n"}']
    if system.startswith(b"["):
        chunks += [b",", system[1:-1]]
    elif system:
        chunks += [b',{"type":"text","text":', system, b"}"]
    chunks += [b'],"messages":[', messages, b"]"]
    return _closed(chunks, fields)


def _closed(chunks: list[Chunk], fields: bytes) -> Body:
    """The body: `chunks`, then the client's other `fields` (encoded, without braces), and the close."""
    return Body((*chunks, *((b",", fields) if fields else ()), b"}"))
