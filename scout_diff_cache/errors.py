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
