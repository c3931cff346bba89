"""The proxy's error types and the one place they become each API's error envelope.

A request that came in on the Anthropic Messages API gets Anthropic's envelope
(`{"type": "error", "error": {"type", "message"}}`); every other route gets OpenAI's
(`{"error": {"message", "type", "code"}}`). The HTTP status is the same for both.
"""

from __future__ import annotations

import json

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


class ConfigError(Exception):
    """A configuration that must not start: the message names file, section, key and value."""


class ProxyError(Exception):
    """An error a client sees; subclasses fix the HTTP status and envelope fields."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the error needs (a fresh dict: callers may add to it)."""
        return {}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class TooManyRequests(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Forbidden(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RepositoryError(ProxyError):
    status = 500
    type = "server_error"
    code = "repository_error"


class UpstreamError(ProxyError):
    """The upstream failed or refused: what these say is how the upstream is doing."""


class UpstreamBadResponse(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The upstream's own 4xx, passed on with its status so the client sees the real cause."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, status: int, message: str, type_: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or self.type
        self.code = code or self.code


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(error: ProxyError, anthropic: bool = False) -> bytes:
    """The error's body in the envelope of the API the request came in on."""
    if anthropic:
        inner = {"type": anthropic_type(error.status), "message": error.message}
        return json.dumps({"type": "error", "error": inner}).encode()
    return json.dumps({"error": {"message": error.message, "type": error.type, "code": error.code}}).encode()


def error_event(error: ProxyError, api: str) -> bytes:
    """The error as the SSE event each API's streaming clients expect, once the stream has begun."""
    if api == "messages":
        return b"event: error\ndata: " + error_body(error, anthropic=True) + b"\n\n"
    if api == "responses":
        payload = {"type": "error", "code": error.code, "message": error.message, "param": None}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    return b"data: " + error_body(error) + b"\n\n"
