"""The proxy's error types and the one place they become OpenAI error envelopes."""

from __future__ import annotations

import json


class ConfigError(Exception):
    """A configuration that must not start: the message names file, section, key and value."""


class ProxyError(Exception):
    """An error a client sees; subclasses fix the HTTP status and envelope fields."""

    status = 500
    type = "server_error"
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}


class TooManyRequests(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"
    headers = {"Retry-After": "1"}


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


class UpstreamBadResponse(ProxyError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamUnavailable(ProxyError):
    status = 503
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def envelope(message: str, type_: str, code: str) -> bytes:
    """The OpenAI error body, as bytes ready to send or to wrap in an SSE event."""
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


def error_body(error: ProxyError) -> bytes:
    return envelope(error.message, error.type, error.code)


class UpstreamRejected(ProxyError):
    """The upstream's own 4xx, passed on with its status so the client sees the real cause."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, status: int, message: str, type_: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or self.type
        self.code = code or self.code
