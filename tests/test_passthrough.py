"""The /v1 pass-through: only inference routes reach the upstream, by paths that cannot mean others."""

from __future__ import annotations

import pytest

from scout_diff_cache.errors import InvalidRequest, NotFound
from scout_diff_cache.passthrough import DEFAULT_ROUTES, forwarded

#: Paths that could reach another route once decoded or joined: refused before any upstream work.
ESCAPES = [
    "/v1/../slots/0?action=erase",
    "/v1/%2e%2e/flush_cache",
    "/v1/..%2fflush_cache",
    "/v1/%2e%2e%2f%2e%2e%2freset_prefix_cache",
    "/v1/%2E%2E/x",
    "/v1/./completions",
    "/v1/completions/..",
    "/v1/completions/../../slots/0",
    "/v1/embeddings/%2e%2e/%2e%2e/flush_cache",
    "/v1/a%2fb",
    "/v1/embeddings%2F..%2F..%2Fflush_cache",
    "/v1/a%5cb",
    "/v1/a%5Cb",
    "/v1/a\\b",
    "/v1/..\\slots\\0",
    "/v1//completions",
    "/v1/completions/",
    "/v1/%252e%252e/flush_cache",
    "/v1/%65mbeddings",
    "/v1/completions;x=1",
    "/v1/a%00b",
    "/v1/completions%3Fx=1",
]

#: Plain paths to routes that are not inference: not found, nothing sent.
ELSEWHERE = [
    "/v1/slots/0?action=erase",
    "/v1/load_lora_adapter",
    "/v1/flush_cache",
    "/v1/update_weights_from_disk",
    "/v1/audio",
    "/v1/embeddingsx",
    "/v1/files/f1",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_that_could_mean_another_is_refused(path: str) -> None:
    with pytest.raises(InvalidRequest, match="is refused: it has"):
        forwarded(path.partition("?")[0], ())


@pytest.mark.parametrize("path", ELSEWHERE)
def test_a_route_not_listed_is_not_found(path: str) -> None:
    with pytest.raises(NotFound, match="not a route the proxy serves or passes on"):
        forwarded(path.partition("?")[0], ())


def test_listed_routes_and_the_routes_below_them_are_forwarded_as_their_segments() -> None:
    assert forwarded("/v1/embeddings", ()) == ("embeddings",)
    assert forwarded("/v1/audio/transcriptions", ()) == ("audio", "transcriptions")
    assert forwarded("/v1/files/file-a_1.b~c", ("files",)) == ("files", "file-a_1.b~c")
    assert all(forwarded(f"/v1/{route}", ()) == tuple(route.split("/")) for route in DEFAULT_ROUTES)
