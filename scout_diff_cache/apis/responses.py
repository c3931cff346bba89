"""The Responses API (`/v1/responses`): `input` and `instructions` checked, the snapshot in
`instructions` and the working diff as a system item opening `input`, its usage (`input_tokens`
counts the cached ones), and its SSE error event (OpenAI's envelope otherwise)."""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..encoding import Body, Chunk, encode_json
from ..errors import ContextTooLong, InvalidRequest, ProxyError
from ..usage import Usage, included_figures, read_counted, take_out_included
from .assembly import SystemTurns, assemble_responses, enveloped, joined_text, own_system_text
from .chat import openai_error_body, openai_message
from .validation import ClientRequest, RequestRules, check_message, common_fields, encoded_request, object_body

RESPONSES_ROLES = frozenset({"system", "developer", "user", "assistant"})


def parse_responses_request(raw: bytes, rules: RequestRules) -> ClientRequest:
    """A Responses API request: `input` (a string, or items) and `instructions` are placed; a
    string input becomes one user message, which the upstream reads the same way."""
    body = object_body(raw)
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
            check_message(where, item, RESPONSES_ROLES, null_content=None)
        elif not isinstance(item.get("type"), str):
            raise InvalidRequest(f"{where}.type must be a string")
    instructions = body.pop("instructions", None)
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise InvalidRequest("'previous_response_id' must be a string")
    stream = common_fields(body, rules)
    shapes = tuple(_item_shape(item) for item in items)
    system = encode_json(instructions) if instructions else b""
    return attrs.evolve(
        encoded_request(stream, True, items, body, shapes), system=system, continues_response=previous is not None
    )


def _item_shape(item: dict[str, Any]) -> str:
    kind = item.get("type", "message")
    if kind == "message":
        return "system" if item["role"] == "developer" else str(item["role"])
    if kind.endswith("_output"):
        return "tool"  # function_call_output and its kin: results of a call
    return "assistant+tools" if kind.endswith("_call") else "assistant"


@attrs.frozen
class Responses(SystemTurns):
    """A system message is an input item too; a message's text parts are `input_text`."""

    name: str = "responses"
    path: str = "/responses"
    text_part = "input_text"

    def parse(self, raw: bytes, rules: RequestRules) -> ClientRequest:
        return parse_responses_request(raw, rules)

    def body(
        self,
        request: ClientRequest,
        parts: tuple[bytes, ...],
        snapshot: tuple[Chunk, ...],
        start: bytes,
        strict: bool = False,
    ) -> Body:
        own, parts = own_system_text(request.system, request.shapes, parts, strict)
        if strict:
            return assemble_responses(b",".join(parts), request.fields, joined_text(snapshot, start, own))
        instructions = (*snapshot, *((b"\\n", own) if own else ()))
        return assemble_responses(b",".join(parts), request.fields, instructions, enveloped(start))

    def read_usage(self, payload: Any) -> Usage | None:
        return read_counted(payload, included_figures("input_tokens", "input_tokens_details"))

    def take_out(self, usage: dict[str, Any], injected: int) -> None:
        take_out_included(usage, injected, "input_tokens", "input_tokens_details")

    def error_body(self, error: ProxyError) -> bytes:
        return openai_error_body(error, "input")

    def error_event(self, error: ProxyError) -> bytes:
        param = "input" if isinstance(error, ContextTooLong) else None
        payload = {"type": "error", "code": error.code, "message": openai_message(error), "param": param}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


RESPONSES = Responses()
