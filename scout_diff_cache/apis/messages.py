"""Anthropic's Messages API (`/v1/messages`, and `count_tokens`): `system` and `messages` checked,
the snapshot as `system`'s first block, a change always attached to a message's text, its usage
(`input_tokens` excludes cache reads and writes), and Anthropic's error envelope and SSE event.

The Messages API has no system messages among its turns, so there a change is always attached: it
opens the user's question, or closes the last tool result it came after, inside that result. Not
as a text block after the results: llama.cpp renders a user message's text before its tool
results, which would put the change between the call and its results.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from ..encoding import Body, Chunk, encode_json
from ..errors import ContextTooLong, InvalidRequest, ProxyError
from ..usage import Usage, int_field, read_counted, take_out_in_order
from .assembly import assemble_messages, system_message, with_text
from .validation import ClientRequest, RequestRules, checked_messages, common_fields, encoded_request, object_body

#: Anthropic's API takes user and assistant turns; Claude Code also sends system messages among
#: them (vLLM moves them into the system prompt, llama.cpp renders them in place).
MESSAGES_ROLES = frozenset({"user", "assistant", "system"})
#: Claude Code's first system line: a version suffix derived from each conversation's first prompt.
BILLING_HEADER = re.compile(r"x-anthropic-billing-header:[^\n]*(?:\n|$)")

#: Anthropic's error types by HTTP status (what its SDKs and Claude Code branch on).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

#: The prompt's figures, counted apart; injected tokens come out of the cache reads first.
PROMPT_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens", "input_tokens")


def parse_messages_request(raw: bytes, rules: RequestRules) -> ClientRequest:
    """An Anthropic Messages request (or a count_tokens one): `system` and `messages` are placed."""
    body = object_body(raw)
    messages = checked_messages(body, MESSAGES_ROLES, null_content=None)
    system = body.pop("system", None)
    if isinstance(system, list):
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise InvalidRequest(f"system[{index}] must be a text block: {{'type': 'text', 'text': '...'}}")
    elif system is not None and not isinstance(system, str):
        raise InvalidRequest("'system' must be a string or an array of text blocks")
    if rules.drop_billing_header and system:
        system = without_billing_header(system)
    stream = common_fields(body, rules)
    shapes = tuple(_message_shape(message) for message in messages)
    encoded_system = encode_json(system) if system else b""
    marks = tuple(encode_json(_unmarked(message)) for message in messages)
    return attrs.evolve(encoded_request(stream, True, messages, body, shapes), system=encoded_system, marks=marks)


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


def _unmarked(value: Any) -> Any:
    """`value` without its `cache_control` markers, at any depth."""
    if isinstance(value, dict):
        return {key: _unmarked(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(item) for item in value]
    return value


def _message_shape(message: dict[str, Any]) -> str:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    kinds = {block.get("type") for block in blocks}
    if message["role"] == "user":
        return "tool" if "tool_result" in kinds else "user"
    if message["role"] == "assistant":
        return "assistant+tools" if "tool_use" in kinds else "assistant"
    return str(message["role"])


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_message(error: ProxyError) -> str:
    """An over-long prompt in Anthropic's words, which Claude Code compacts on (and reads N - M from)."""
    if not isinstance(error, ContextTooLong):
        return error.message
    if error.tokens is not None and error.window is not None:
        return f"prompt is too long: {error.tokens} tokens > {error.window} maximum"
    said = error.message
    return said if said.lower().startswith("prompt is too long") else f"prompt is too long: {said}"


def _prompt_figures(usage: dict[str, Any] | None) -> tuple[int | None, int | None]:
    parts = [
        int_field(usage, key) for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ]
    return (None if parts[0] is None else sum(part or 0 for part in parts)), parts[1]


@attrs.frozen
class Messages:
    name: str = "messages"
    path: str = "/messages"

    def parse(self, raw: bytes, rules: RequestRules) -> ClientRequest:
        return parse_messages_request(raw, rules)

    def placement(self, configured: str) -> str:
        """Attached, whatever is configured: no system turn may stand among the messages."""
        return "attached"

    def separate(self, text: str) -> bytes:
        return system_message(text)  # never placed so (see `placement`)

    def opened(self, part: bytes, lead: bytes) -> bytes:
        return with_text(part, lead, "text", at_start=True)

    def closed(self, part: bytes, tail: bytes) -> bytes:
        """The message `part` with `tail` at the end of its last tool result's content."""
        message = json.loads(part)
        blocks = message["content"]
        last = max(index for index, block in enumerate(blocks) if block.get("type") == "tool_result")
        blocks[last] = json.loads(with_text(encode_json(blocks[last]), tail, "text", at_start=False))
        return encode_json(message)

    def body(
        self,
        request: ClientRequest,
        parts: tuple[bytes, ...],
        snapshot: tuple[Chunk, ...],
        start: bytes,
        strict: bool = False,
    ) -> Body:
        """One system anyway: the layouts are the same here."""
        first = self.opened(parts[0], start)
        return assemble_messages(b",".join((first, *parts[1:])), request.fields, snapshot, request.system)

    def read_usage(self, payload: Any) -> Usage | None:
        return read_counted(payload, _prompt_figures)

    def take_out(self, usage: dict[str, Any], injected: int) -> None:
        take_out_in_order(usage, injected, PROMPT_KEYS)

    def error_body(self, error: ProxyError) -> bytes:
        """Anthropic's envelope: `{"type": "error", "error": {"type", "message"}}`."""
        inner = {"type": anthropic_type(error.status), "message": anthropic_message(error)}
        return json.dumps({"type": "error", "error": inner}).encode()

    def error_event(self, error: ProxyError) -> bytes:
        return b"event: error\ndata: " + self.error_body(error) + b"\n\n"


MESSAGES = Messages()
