"""Assembling the upstream body: [snapshot][working diff][client messages], from encoded parts.

The snapshot arrives already JSON-encoded (once per snapshot, its text without quotes); per request
only the diff, the client's messages and its other fields are encoded, and the body goes out as a
list of chunks with a known length, so a 50 MB snapshot is never copied or re-serialised per request.

Each API puts the snapshot where its upstream renders it first:
- chat completions: the first system message, the working diff the second, then the client's;
- Responses: `instructions` (rendered before any input) holds the snapshot, then after a blank
  line the client's own instructions; the working diff is a system item opening `input`;
- Messages: `system` is a list whose first block is the whole snapshot, the client's system
  blocks following untouched (upstreams join the blocks into one system message; Llama 4's
  template, given a list, renders only its first part); the working diff opens the first message.
So the client's stable parts (instructions, system prompt, tools) stay ahead of the volatile diff.
For strict templates (see `upstream/layout.py`) chat and Responses carry one system text instead:
the snapshot, the working diff, then the client's own system text.

What more than one dialect uses lives here: the chat system message (also a Responses input
item), text added to a message, and the assembly of each body from its chunks.
"""

from __future__ import annotations

import json

from ..encoding import Body, Chunk, Encoded, encode_json, encode_text

#: How a system message's encoding opens and closes around its content.
SYSTEM_OPEN = b'{"role":"system","content":"'
SYSTEM_CLOSE = b'"}'

#: The text parts a system message's content may hold, on chat and Responses.
TEXT_PARTS = frozenset({"text", "input_text"})


def system_message(*parts: str) -> bytes:
    """A system message whose content is one string: the parts joined (Llama 4 renders only a
    list's first part). Encoded part by part, the same bytes as encoding the joined text, so that
    a large message never holds the GIL (and so the event loop) for one long call."""
    return SYSTEM_OPEN + b"".join(encode_text(part) for part in parts) + SYSTEM_CLOSE


def enveloped(text: tuple[Chunk, ...] | bytes) -> Encoded:
    """A system message around encoded text (a snapshot's chunks, spliced without a copy)."""
    if isinstance(text, bytes):
        return SYSTEM_OPEN + text + SYSTEM_CLOSE
    return (SYSTEM_OPEN, *text, SYSTEM_CLOSE)


def joined_text(snapshot: tuple[Chunk, ...], start: bytes, own: bytes = b"") -> tuple[Chunk, ...]:
    """The strict layout's one system text, encoded without quotes: the snapshot's, the working
    diff's, then after a blank line the client's own (`own`, encoded without quotes), if any."""
    return (*snapshot, start, *((b"\\n", own) if own else ()))


def chat_context(snapshot: tuple[Chunk, ...], start: bytes, strict: bool, own: bytes = b"") -> tuple[Encoded, ...]:
    """The chat messages that carry the context (encoded texts): the snapshot and the working diff
    as two system messages, or in the strict layout one, which also holds the client's own system
    text `own`."""
    if strict:
        return (enveloped(joined_text(snapshot, start, own)),)
    return (enveloped(snapshot), enveloped(start))


def own_system_text(
    request_system: bytes, shapes: tuple[str, ...], parts: tuple[bytes, ...], strict: bool
) -> tuple[bytes, tuple[bytes, ...]]:
    """The client's own system text (encoded, without quotes) and the messages left: in the strict
    layout its leading system messages join it, joined by blank lines."""
    own = request_system[1:-1]
    if strict:
        leading, parts = leading_system_text(shapes, parts)
        own = b"\\n\\n".join(text for text in (own, leading) if text)
    return own, parts


def leading_system_text(shapes: tuple[str, ...], parts: tuple[bytes, ...]) -> tuple[bytes, tuple[bytes, ...]]:
    """The client's leading system (and developer) messages' text, encoded without quotes and
    joined by blank lines, and the messages after them. A message whose content is not only text
    stops the run: it stays where it is."""
    texts: list[str] = []
    for shape, part in zip(shapes, parts, strict=False):
        content = json.loads(part).get("content") if shape in ("system", "developer") else None
        if isinstance(content, list) and all(item.get("type") in TEXT_PARTS for item in content):
            content = "".join(str(item.get("text", "")) for item in content)
        if not isinstance(content, str):
            break
        texts.append(content)
    return encode_text("\n\n".join(texts)), parts[len(texts) :]


def with_text(part: bytes, text: bytes, text_part: str, at_start: bool) -> bytes:
    """Add encoded `text` to a message's content: to the string, or as a text block of its own."""
    message = json.loads(part)
    content = message.pop("content", None)
    head = encode_json(message)[1:-1]
    if isinstance(content, list):
        gap = b"" if at_start or not content else b"\\n\\n"  # llama.cpp joins a result's blocks with nothing
        block = b'{"type":"' + text_part.encode() + b'","text":"' + gap + text + b'"}'
        blocks = [encode_json(item) for item in content]
        blocks = [block, *blocks] if at_start else [*blocks, block]
        encoded = b"[" + b",".join(blocks) + b"]"
    else:
        own = encode_json(content or "")[1:-1]
        encoded = b'"' + (text + own if at_start else own + (b"\\n\\n" if own else b"") + text) + b'"'
    return b"{" + head + (b"," if head else b"") + b'"content":' + encoded + b"}"


def assemble(messages: bytes, fields: bytes, *injected: Encoded) -> Body:
    """A chat body: the `injected` messages (encoded), then the client's `messages` (encoded, without
    their brackets), then its other `fields` (encoded, without their braces)."""
    chunks: list[Chunk] = [b'{"messages":[']
    for message in injected:
        chunks += [message] if isinstance(message, bytes) else message
        chunks.append(b",")
    chunks += [messages, b"]"]
    return _closed(chunks, fields)


def assemble_responses(input_items: bytes, fields: bytes, instructions: tuple[Chunk, ...], *injected: Encoded) -> Body:
    """A Responses body: `instructions` (encoded text, without quotes), then `input`: the
    `injected` items, then the client's items."""
    chunks: list[Chunk] = [b'{"instructions":"', *instructions, b'","input":[']
    for item in injected:
        chunks += [item] if isinstance(item, bytes) else item
        chunks.append(b",")
    chunks += [input_items, b"]"]
    return _closed(chunks, fields)


def assemble_messages(messages: bytes, fields: bytes, snapshot: tuple[Chunk, ...], system: bytes) -> Body:
    """A Messages body: `system` is the snapshot's text as the first block, then the client's
    `system` (encoded: a string becomes one text block; a list's blocks follow as they came)."""
    chunks: list[Chunk] = [b'{"system":[{"type":"text","text":"', *snapshot, b'\\n"}']
    if system.startswith(b"["):
        chunks += [b",", system[1:-1]]
    elif system:
        chunks += [b',{"type":"text","text":', system, b"}"]
    chunks += [b'],"messages":[', messages, b"]"]
    return _closed(chunks, fields)


def _closed(chunks: list[Chunk], fields: bytes) -> Body:
    """The body: `chunks`, then the client's other `fields` (encoded, without braces), and the close."""
    return Body((*chunks, *((b",", fields) if fields else ()), b"}"))


class SystemTurns:
    """Where a change goes on the APIs whose turns may hold a system message (chat, Responses): as
    configured, as a system message of its own or attached to a message's text, whose content
    parts are of the type `text_part` (a class attribute of each)."""

    text_part = "text"

    def placement(self, configured: str) -> str:
        return configured

    def separate(self, text: str) -> bytes:
        return system_message(text)

    def opened(self, part: bytes, lead: bytes) -> bytes:
        return with_text(part, lead, self.text_part, at_start=True)

    def closed(self, part: bytes, tail: bytes) -> bytes:
        return with_text(part, tail, self.text_part, at_start=False)
