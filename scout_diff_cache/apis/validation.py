"""What every API's request shares: the checks each dialect's parser makes of its body, and the
request encoded once before anything is sent. A request that fails a check gets a 400 naming the
field, and nothing goes upstream."""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..encoding import encode_json
from ..errors import InvalidRequest


@attrs.frozen
class RequestRules:
    """What the configuration does to every client body, whichever API it came on."""

    #: The model asked for when the client names none.
    model: str
    #: Replaces the client's `cache_salt`, when configured.
    cache_salt: str | None = None
    #: Leave Claude Code's billing line out of a Messages `system` (see `without_billing_header`).
    drop_billing_header: bool = True
    #: The configured `chat_template_kwargs`, under the client's own.
    template_kwargs: dict[str, Any] | None = None


@attrs.frozen
class ClientRequest:
    """A client's request split into what the proxy places (its messages, its own system text)
    and what it passes on as it came (every other field)."""

    stream: bool
    #: Whether the client asked for chat's usage chunk; chat streams always ask upstream, for accounting.
    wants_usage: bool
    #: Each of the client's messages (or Responses input items), JSON-encoded: what a conversation
    #: is recognised by.
    parts: tuple[bytes, ...]
    #: Every other field of the client's body (model defaulted), JSON-encoded, without braces.
    fields: bytes
    #: Each message's shape: its role, "assistant+tools" for a turn that calls tools, "tool" for
    #: tool results (an Anthropic user message holding them included).
    shapes: tuple[str, ...] = ()
    #: The client's own system text, JSON-encoded: Responses' `instructions` (a string) or
    #: Messages' `system` (a string or a list of blocks); empty when it sent none.
    system: bytes = b""
    #: Responses' `previous_response_id`: the upstream holds the earlier turns itself.
    continues_response: bool = False
    #: What each message is recognised by from turn to turn, where that is not its encoding:
    #: Anthropic clients move their `cache_control` markers to the newest turn on every request.
    marks: tuple[bytes, ...] = ()

    @property
    def identities(self) -> tuple[bytes, ...]:
        """What a conversation recognises each message by."""
        return self.marks or self.parts

    @property
    def encoded_bytes(self) -> int:
        """Bytes of the client's own messages (comma-separated) and system text, as encoded."""
        return sum(map(len, self.parts)) + len(self.parts) - 1 + len(self.system)


def object_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8") from None
    except ValueError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def checked_messages(body: dict[str, Any], roles: frozenset[str], null_content: str | None) -> list[Any]:
    """The body's `messages`, taken out of it and checked."""
    messages = body.pop("messages", None)
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects")
    for position, message in enumerate(messages):
        check_message(f"messages[{position}]", message, roles, null_content)
    return messages


def common_fields(body: dict[str, Any], rules: RequestRules) -> bool:
    """Check and default what every API shares (model, stream, cache_salt, the template's
    variables); the stream flag."""
    body.setdefault("model", rules.model)
    if rules.cache_salt is not None:
        body["cache_salt"] = rules.cache_salt
    if rules.template_kwargs:
        own = body.get("chat_template_kwargs") or {}
        if not isinstance(own, dict):
            raise InvalidRequest("'chat_template_kwargs' must be an object")
        body["chat_template_kwargs"] = {**rules.template_kwargs, **own}
    if not isinstance(body["model"], str) or not body["model"]:
        raise InvalidRequest("'model' must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false")
    return stream


def encoded_request(
    stream: bool, wants_usage: bool, messages: list[Any], body: dict[str, Any], shapes: tuple[str, ...]
) -> ClientRequest:
    try:
        parts = tuple(encode_json(message) for message in messages)
        return ClientRequest(stream, wants_usage, parts, encode_json(body)[1:-1], shapes)
    except UnicodeEncodeError:
        raise InvalidRequest("the request holds a lone UTF-16 surrogate escape, which is not valid text") from None


def check_message(where: str, message: Any, roles: frozenset[str], null_content: str | None) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object")
    role = message.get("role")
    if not isinstance(role, str) or role not in roles:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(sorted(roles))}")
    content = message.get("content")
    if content is None:
        if role != null_content:
            raise InvalidRequest(f"{where}.content is required for role {role!r}")
    elif isinstance(content, list):
        for index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"{where}.content[{index}] must be an object with a string 'type'")
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string, an array of content parts, or null")
