"""The three APIs clients speak, and what differs between them: the upstream path, how a request
is checked, how the repository context is laid out in its body, and how a work-tree change is
placed among its messages.

A change is placed at a point `insertion_point` chose: "before" a message, as a message of its own
(a system message in chat, a system item in Responses), or attached to a message's text, "open"
(at its start) or "close" (at its end). The Messages API has no system messages among its turns,
so there a change is always attached: it opens the user's question, or closes the last tool
result it came after, inside that result. Not as a text block after the results: llama.cpp
renders a user message's text before its tool results, which would put the change between the
call and its results.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs

from ..encoding import Body, Encoded, encode_json, encode_text, system_message, system_text
from .assembly import assemble, assemble_messages, assemble_responses, chat_context, joined_text
from .validation import (
    ClientRequest,
    RequestRules,
    parse_chat_request,
    parse_messages_request,
    parse_responses_request,
)

Parser = Callable[[bytes, RequestRules], ClientRequest]


@attrs.frozen
class Api:
    name: str
    #: Where the upstream serves it, under its base URL.
    path: str
    parse: Parser = attrs.field(repr=False)
    #: The content-part type of a text in a user message.
    text_part: str = "text"
    #: Whether a system message may stand among the client's messages.
    separate_changes: bool = True

    def placement(self, configured: str) -> str:
        """Where changes go for this API: as configured, or attached where no system turn may stand."""
        return configured if self.separate_changes else "attached"

    def separate(self, text: str) -> bytes:
        return system_message(text)

    def opened(self, part: bytes, lead: bytes) -> bytes:
        """The message `part` with the encoded text `lead` at the start of its content."""
        return _with_text(part, lead, self.text_part, at_start=True)

    def closed(self, part: bytes, tail: bytes) -> bytes:
        """The message `part` with the encoded text `tail` at the end of its content (in the
        Messages API, of its last tool result's content)."""
        if self.separate_changes:
            return _with_text(part, tail, self.text_part, at_start=False)
        message = json.loads(part)
        blocks = message["content"]
        last = max(index for index, block in enumerate(blocks) if block.get("type") == "tool_result")
        blocks[last] = json.loads(_with_text(encode_json(blocks[last]), tail, "text", at_start=False))
        return encode_json(message)

    def body(
        self, request: ClientRequest, parts: tuple[bytes, ...], snapshot: Encoded, start: bytes, strict: bool = False
    ) -> Body:
        """The upstream body: the snapshot first, the working diff `start`, then the client's `parts`.

        In the strict layout (see `layout.py`) the client's leading system messages join the
        snapshot and the diff in one system message; the Messages API has one system anyway.
        """
        if self.name == "messages":
            first = self.opened(parts[0], b"".join(system_text(start)))
            return assemble_messages(b",".join((first, *parts[1:])), request.fields, snapshot, request.system)
        own = request.system[1:-1]
        if strict:
            leading, parts = _leading_system_text(request.shapes, parts)
            own = b"\\n\\n".join(text for text in (own, leading) if text)
        if self.name == "responses":
            if strict:
                return assemble_responses(b",".join(parts), request.fields, joined_text(snapshot, start, own))
            instructions = (*system_text(snapshot), *((b"\\n", own) if own else ()))
            return assemble_responses(b",".join(parts), request.fields, instructions, start)
        return assemble(b",".join(parts), request.fields, *chat_context(snapshot, start, strict, own))


CHAT = Api("chat", "/chat/completions", parse_chat_request)
RESPONSES = Api("responses", "/responses", parse_responses_request, text_part="input_text")
MESSAGES = Api("messages", "/messages", parse_messages_request, separate_changes=False)


#: The text parts a system message's content may hold, on chat and Responses.
TEXT_PARTS = frozenset({"text", "input_text"})


def _leading_system_text(shapes: tuple[str, ...], parts: tuple[bytes, ...]) -> tuple[bytes, tuple[bytes, ...]]:
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


def _with_text(part: bytes, text: bytes, text_part: str, at_start: bool) -> bytes:
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
