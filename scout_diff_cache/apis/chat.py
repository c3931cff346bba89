"""The chat completions API (`/v1/chat/completions`): its body checked, the context as system
messages before the client's, its usage (`prompt_tokens` counts the cached ones), and OpenAI's
error envelope, which every route that is no API's also speaks."""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..encoding import Body, Chunk
from ..errors import ContextTooLong, InvalidRequest, ProxyError
from ..usage import Usage, included_figures, read_counted, take_out_included
from .assembly import SystemTurns, assemble, chat_context, own_system_text
from .validation import ClientRequest, RequestRules, checked_messages, common_fields, encoded_request, object_body

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_chat_request(raw: bytes, rules: RequestRules) -> ClientRequest:
    """A chat completions request."""
    body = object_body(raw)
    messages = checked_messages(body, CHAT_ROLES, null_content="assistant")
    stream = common_fields(body, rules)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object")
    wants_usage = bool(options and options.get("include_usage") is True)
    if stream:
        body["stream_options"] = {**(options or {}), "include_usage": True}
    shapes = tuple(
        "assistant+tools" if message["role"] == "assistant" and message.get("tool_calls") else message["role"]
        for message in messages
    )
    return encoded_request(stream, wants_usage, messages, body, shapes)


def openai_error_body(error: ProxyError, param: str | None = None) -> bytes:
    """OpenAI's envelope: `{"error": {"message", "type", "code"}}`; an over-long prompt's also names
    the field that grew too long (`param`), as OpenAI's own does."""
    inner: dict[str, object] = {"message": openai_message(error), "type": error.type, "code": error.code}
    if isinstance(error, ContextTooLong):
        inner["param"] = param
    return json.dumps({"error": inner}).encode()


def openai_message(error: ProxyError) -> str:
    """An over-long prompt in OpenAI's words where the upstream gave both figures; else its message."""
    if isinstance(error, ContextTooLong) and error.tokens is not None and error.window is not None:
        return (
            f"This model's maximum context length is {error.window} tokens. However, your messages resulted"
            f" in {error.tokens} tokens. Please reduce the length of the messages."
        )
    return error.message


@attrs.frozen
class Chat(SystemTurns):
    name: str = "chat"
    path: str = "/chat/completions"

    def parse(self, raw: bytes, rules: RequestRules) -> ClientRequest:
        return parse_chat_request(raw, rules)

    def body(
        self,
        request: ClientRequest,
        parts: tuple[bytes, ...],
        snapshot: tuple[Chunk, ...],
        start: bytes,
        strict: bool = False,
    ) -> Body:
        own, parts = own_system_text(request.system, request.shapes, parts, strict)
        return assemble(b",".join(parts), request.fields, *chat_context(snapshot, start, strict, own))

    def read_usage(self, payload: Any) -> Usage | None:
        return read_counted(payload, included_figures("prompt_tokens", "prompt_tokens_details"))

    def take_out(self, usage: dict[str, Any], injected: int) -> None:
        take_out_included(usage, injected, "prompt_tokens", "prompt_tokens_details")

    def error_body(self, error: ProxyError) -> bytes:
        return openai_error_body(error, "messages")

    def error_event(self, error: ProxyError) -> bytes:
        return b"data: " + self.error_body(error) + b"\n\n"


CHAT = Chat()
