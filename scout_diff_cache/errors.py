"""The proxy's error types: a small hierarchy, each fixing its HTTP status and envelope fields.

Each client dialect (`apis/`) maps them to its own envelope and SSE error event, one method each;
the error middleware answers with the dialect of the route that handled the request.
"""

from __future__ import annotations


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


class ContextTooLong(UpstreamRejected):
    """The upstream refused a prompt longer than its window: the error clients compact on.

    `tokens` (what the upstream counted against the window) and `window` are the upstream's own
    figures where it said them, None where it did not; each dialect words the message its way.
    """

    status = 400
    code = "context_length_exceeded"

    def __init__(self, message: str, tokens: int | None = None, window: int | None = None) -> None:
        super().__init__(400, message, "invalid_request_error", self.code)
        self.tokens = tokens
        self.window = window

    def less(self, injected: int) -> ContextTooLong:
        """The figures as the client counts them, `injected` tokens out of both (the overshoot kept);
        unchanged when a figure is unknown or the injected context alone fills the window."""
        if self.tokens is None or self.window is None or not 0 < injected < self.window:
            return self
        return ContextTooLong(self.message, self.tokens - injected, self.window - injected)
