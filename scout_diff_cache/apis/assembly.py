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

from ..encoding import SYSTEM_CLOSE, SYSTEM_OPEN, Body, Chunk, Encoded, system_text


def joined_text(snapshot: Encoded, start: bytes, own: bytes = b"") -> tuple[Chunk, ...]:
    """The strict layout's one system text, encoded without quotes: the snapshot's, the working
    diff's, then after a blank line the client's own (`own`, encoded without quotes), if any."""
    return (*system_text(snapshot), *system_text(start), *((b"\\n", own) if own else ()))


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
