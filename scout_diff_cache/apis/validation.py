"""Checking a client's request, on any of the three APIs, and encoding its parts once before
anything is sent. A request that fails a check gets a 400 naming the field, and nothing goes
upstream."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from ..encoding import encode_json
from ..errors import InvalidRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
RESPONSES_ROLES = frozenset({"system", "developer", "user", "assistant"})
#: Anthropic's API takes user and assistant turns; Claude Code also sends system messages among
#: them (vLLM moves them into the system prompt, llama.cpp renders them in place).
MESSAGES_ROLES = frozenset({"user", "assistant", "system"})
#: Claude Code's first system line: a version suffix derived from each conversation's first prompt.
BILLING_HEADER = re.compile(r"x-anthropic-billing-header:[^\n]*(?:\n|$)")


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


def parse_chat_request(raw: bytes, rules: RequestRules) -> ClientRequest:
    """A chat completions request."""
    body = _object(raw)
    messages = _messages(body, CHAT_ROLES, null_content="assistant")
    stream = _common(body, rules)
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
    return _encoded(stream, wants_usage, messages, body, shapes)


def parse_responses_request(raw: bytes, rules: RequestRules) -> ClientRequest:
    """A Responses API request: `input` (a string, or items) and `instructions` are placed; a
    string input becomes one user message, which the upstream reads the same way."""
    body = _object(raw)
    items = body.pop("input", None)
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'input' must be a non-empty string or a non-empty array of input items")
    for position, item in enumerate(items):
        where = f"input[{position}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object")
        if item.get("type", "message") == "message":
            _check_message(where, item, RESPONSES_ROLES, null_content=None)
        elif not isinstance(item.get("type"), str):
            raise InvalidRequest(f"{where}.type must be a string")
    instructions = body.pop("instructions", None)
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise InvalidRequest("'previous_response_id' must be a string")
    stream = _common(body, rules)
    shapes = tuple(_item_shape(item) for item in items)
    system = encode_json(instructions) if instructions else b""
    return attrs.evolve(
        _encoded(stream, True, items, body, shapes), system=system, continues_response=previous is not None
    )


def parse_messages_request(raw: bytes, rules: RequestRules) -> ClientRequest:
    """An Anthropic Messages request (or a count_tokens one): `system` and `messages` are placed."""
    body = _object(raw)
    messages = _messages(body, MESSAGES_ROLES, null_content=None)
    system = body.pop("system", None)
    if isinstance(system, list):
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise InvalidRequest(f"system[{index}] must be a text block: {{'type': 'text', 'text': '...'}}")
    elif system is not None and not isinstance(system, str):
        raise InvalidRequest("'system' must be a string or an array of text blocks")
    if rules.drop_billing_header and system:
        system = without_billing_header(system)
    stream = _common(body, rules)
    shapes = tuple(_message_shape(message) for message in messages)
    encoded_system = encode_json(system) if system else b""
    marks = tuple(encode_json(_unmarked(message)) for message in messages)
    return attrs.evolve(_encoded(stream, True, messages, body, shapes), system=encoded_system, marks=marks)


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8") from None
    except ValueError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _messages(body: dict[str, Any], roles: frozenset[str], null_content: str | None) -> list[Any]:
    """The body's `messages`, taken out of it and checked."""
    messages = body.pop("messages", None)
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects")
    for position, message in enumerate(messages):
        _check_message(f"messages[{position}]", message, roles, null_content)
    return messages


def without_billing_header(system: str | list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    """A Messages `system` without Claude Code's billing line at its start (None if nothing is left).

    The line (`x-anthropic-billing-header: cc_version=2.1.197.ed9; cc_entrypoint=sdk-cli;`) comes
    as the first block, its suffix derived from the conversation's first prompt: left in, every new
    conversation would miss the cache for the whole system prompt and tools after it.
    """
    if isinstance(system, str):
        return _unbilled(system) or None
    if not system or (first := _unbilled(system[0]["text"])) == system[0]["text"]:
        return system
    return [*([{**system[0], "text": first}] if first else []), *system[1:]] or None


def _unbilled(text: str) -> str:
    found = BILLING_HEADER.match(text)
    return text[found.end() :] if found else text


def _common(body: dict[str, Any], rules: RequestRules) -> bool:
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


def _encoded(
    stream: bool, wants_usage: bool, messages: list[Any], body: dict[str, Any], shapes: tuple[str, ...]
) -> ClientRequest:
    try:
        parts = tuple(encode_json(message) for message in messages)
        return ClientRequest(stream, wants_usage, parts, encode_json(body)[1:-1], shapes)
    except UnicodeEncodeError:
        raise InvalidRequest("the request holds a lone UTF-16 surrogate escape, which is not valid text") from None


def _check_message(where: str, message: Any, roles: frozenset[str], null_content: str | None) -> None:
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


def _unmarked(value: Any) -> Any:
    """`value` without its `cache_control` markers, at any depth."""
    if isinstance(value, dict):
        return {key: _unmarked(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(item) for item in value]
    return value


def _item_shape(item: dict[str, Any]) -> str:
    kind = item.get("type", "message")
    if kind == "message":
        return "system" if item["role"] == "developer" else str(item["role"])
    if kind.endswith("_output"):
        return "tool"  # function_call_output and its kin: results of a call
    return "assistant+tools" if kind.endswith("_call") else "assistant"


def _message_shape(message: dict[str, Any]) -> str:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    kinds = {block.get("type") for block in blocks}
    if message["role"] == "user":
        return "tool" if "tool_result" in kinds else "user"
    if message["role"] == "assistant":
        return "assistant+tools" if "tool_use" in kinds else "assistant"
    return str(message["role"])
