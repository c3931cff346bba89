"""Checking a client's chat request and encoding its parts once, before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import attrs

from .errors import InvalidRequest
from .prompt import encode_json

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@attrs.frozen
class ChatRequest:
    stream: bool
    #: Whether the client asked for the usage chunk; streams always ask upstream, for accounting.
    wants_usage: bool
    #: Each of the client's messages, JSON-encoded: what a conversation is recognised by.
    parts: tuple[bytes, ...]
    #: Every other field of the client's body (model defaulted), JSON-encoded, without braces.
    fields: bytes
    #: Each message's role, "assistant+tools" for an assistant message that calls tools.
    shapes: tuple[str, ...] = ()

    @property
    def messages(self) -> bytes:
        """The client's messages, JSON-encoded, without the enclosing brackets."""
        return b",".join(self.parts)


def parse_chat_request(raw: bytes, default_model: str, cache_salt: str | None = None) -> ChatRequest:
    """The request checked and encoded; `cache_salt`, when configured, replaces the client's."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8") from None
    except ValueError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    messages = body.pop("messages", None)
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects")
    for position, message in enumerate(messages):
        _check_message(position, message)
    body.setdefault("model", default_model)
    if cache_salt is not None:
        body["cache_salt"] = cache_salt
    if not isinstance(body["model"], str) or not body["model"]:
        raise InvalidRequest("'model' must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false")
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
    try:
        parts = tuple(encode_json(message) for message in messages)
        return ChatRequest(stream, wants_usage, parts, encode_json(body)[1:-1], shapes)
    except UnicodeEncodeError:
        raise InvalidRequest("the request holds a lone UTF-16 surrogate escape, which is not valid text") from None


def _check_message(position: int, message: Any) -> None:
    where = f"messages[{position}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(sorted(ROLES))}")
    content = message.get("content")
    if content is None:
        if role != "assistant":
            raise InvalidRequest(f"{where}.content is required for role {role!r}")
    elif isinstance(content, list):
        for index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"{where}.content[{index}] must be an object with a string 'type'")
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string, an array of content parts, or null")
