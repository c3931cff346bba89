"""The error types: what a client gets is decided per error, never shared between errors."""

from __future__ import annotations

from scout_diff_cache.errors import ProxyError, TooManyRequests, Unauthorized, UpstreamError, UpstreamRejected


def test_an_errors_headers_are_its_own() -> None:
    first, second = TooManyRequests("busy"), TooManyRequests("busy too")
    first.headers["X-Extra"] = "set by one handler"
    assert first.headers == second.headers == {"Retry-After": "1"}
    assert Unauthorized("no key").headers == {"WWW-Authenticate": "Bearer"}
    assert ProxyError("plain").headers == {}


def test_an_upstream_rejection_keeps_the_upstreams_status_and_is_an_upstream_error() -> None:
    error = UpstreamRejected(422, "bad field", "invalid_request_error")
    assert (error.status, error.type, error.code) == (422, "invalid_request_error", "upstream_rejected")
    assert isinstance(error, UpstreamError)
