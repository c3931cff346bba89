"""`GET /metrics` after real traffic, checked against the exposition format's rules."""

from __future__ import annotations

import re
from typing import NotRequired, TypedDict

from scout_diff_cache.metrics import Counter, Histogram, _counter, _histogram, escape_label

from support import FakeUpstream, GitRepo, ProxyFactory, chat, snapshot_ready

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)')


class Family(TypedDict):
    """One metric family: its `# TYPE` and its sample lines."""

    type: NotRequired[str]
    samples: list[str]


def parse(text: str) -> dict[str, Family]:
    """Families by name, checking the format's rules on the way."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert NAME.fullmatch(name) and name not in families, line
            current = families[name] = {"samples": []}
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert current is families[name] and kind in ("counter", "gauge", "histogram"), line
            current["type"] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, line
            assert current is not None and match[1].startswith(next(reversed(families))), line
            float(match[4].replace("+Inf", "inf"))
            current["samples"].append(line)
    return families


def test_histograms_are_cumulative_with_inf_sum_and_count() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value, (("route", "/x"),))
    counter = Counter()
    counter.inc((("path", 'a "quoted"\\ line\nbreak'),))
    lines = _histogram("h_seconds", "help", histogram)
    assert lines[2:] == [
        'h_seconds_bucket{route="/x",le="0.1"} 1',
        'h_seconds_bucket{route="/x",le="1"} 2',
        'h_seconds_bucket{route="/x",le="+Inf"} 3',
        'h_seconds_sum{route="/x"} 5.55',
        'h_seconds_count{route="/x"} 3',
    ]
    assert _counter("c_total", "help", counter)[2] == 'c_total{path="a \\"quoted\\"\\\\ line\\nbreak"} 1'
    assert escape_label("\\") == "\\\\"


async def test_metrics_after_real_traffic(make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo) -> None:
    client = await make_proxy()
    await snapshot_ready(client)
    for body in (chat(), chat(), chat(stream=True)):
        assert (await client.post("/v1/chat/completions", json=body)).status == 200
    assert (await client.get("/nope")).status == 404
    response = await client.get("/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse(await response.text())
    samples = {name: family["samples"] for name, family in families.items()}
    assert families["scout_requests_total"]["type"] == "counter"
    assert (
        'scout_requests_total{route="/v1/chat/completions",method="POST",status="200"} 3'
        in samples["scout_requests_total"]
    )
    assert 'scout_requests_total{route="unmatched",method="GET",status="404"} 1' in samples["scout_requests_total"]
    duration = samples["scout_request_duration_seconds"]
    assert 'scout_request_duration_seconds_count{route="/v1/chat/completions"} 3' in duration
    buckets = [
        int(line.rsplit(" ", 1)[1])
        for line in duration
        if line.startswith('scout_request_duration_seconds_bucket{route="/v1/chat/completions"')
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3
    assert "scout_upstream_first_byte_seconds_count 3" in samples["scout_upstream_first_byte_seconds"]
    assert "scout_streams_in_flight 0" in samples["scout_streams_in_flight"]
    assert "scout_snapshot_builds_total 1" in samples["scout_snapshot_builds_total"]
    assert "scout_snapshot_build_seconds_count 1" in samples["scout_snapshot_build_seconds"]
    assert int(samples["scout_snapshot_bytes"][0].split()[1]) > 100
    assert int(samples["scout_diff_bytes"][0].split()[1]) > 10
    assert "scout_rebases_total 0" in samples["scout_rebases_total"]
    assert "scout_upstream_prompt_tokens_total 200" in samples["scout_upstream_prompt_tokens_total"]
    assert "scout_upstream_cached_tokens_total 180" in samples["scout_upstream_cached_tokens_total"]
    ratio = float(samples["scout_snapshot_cached_ratio"][0].split()[1])
    assert 0 < ratio <= 1
