"""`GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.

`Metrics` holds every counter, gauge and histogram the proxy keeps (the epochs and the relay add
to them as things happen); the usage totals are read from `Totals` at scrape time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from .accounting import Totals

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


@attrs.define
class Counter:
    values: dict[Labels, float] = attrs.Factory(dict)

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    @property
    def total(self) -> int:
        return int(sum(self.values.values()))


@attrs.define
class Histogram:
    buckets: tuple[float, ...]
    counts: dict[Labels, list[int]] = attrs.Factory(dict)
    sums: dict[Labels, float] = attrs.Factory(dict)

    def observe(self, value: float, labels: Labels = ()) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf: every observation
        self.sums[labels] = self.sums.get(labels, 0.0) + value


@attrs.define
class Metrics:
    requests: Counter = attrs.Factory(Counter)
    request_seconds: Histogram = attrs.Factory(lambda: Histogram(LATENCY_BUCKETS))
    first_byte_seconds: Histogram = attrs.Factory(lambda: Histogram(LATENCY_BUCKETS))
    build_seconds: Histogram = attrs.Factory(lambda: Histogram(BUILD_BUCKETS))
    warmups: Counter = attrs.Factory(Counter)
    snapshot_builds: Counter = attrs.Factory(lambda: Counter({(): 0.0}))
    rebases: Counter = attrs.Factory(lambda: Counter({(): 0.0}))
    folds: Counter = attrs.Factory(lambda: Counter({(): 0.0}))
    #: Conversations by what a request did to them: new, continued, afresh, evicted.
    conversations: Counter = attrs.Factory(Counter)
    #: Bytes of work-tree changes inserted into conversations.
    change_bytes: Counter = attrs.Factory(lambda: Counter({(): 0.0}))
    #: Entries shown as stubs because they could not be read, by why: each path and reason once.
    unreadable: Counter = attrs.Factory(Counter)
    #: Chat prompts sent upstream by path (tokens, text) and why (with `[upstream] prompt` not text).
    prompts: Counter = attrs.Factory(Counter)
    #: Checks of an epoch's token ids against the server's tokenisation of the whole prompt, and of
    #: its conversations' grown ids against the tail's, by outcome.
    prompt_checks: Counter = attrs.Factory(Counter)
    #: Requests whose cached prefix broke before their new turn, by the region it broke in.
    prefix_breaks: Counter = attrs.Factory(Counter)
    #: Gauges: the snapshot being served, the last working diff sent (bytes of text), conversations kept.
    snapshot_bytes: int = 0
    diff_bytes: int = 0
    conversations_kept: int = 0
    streams_in_flight: int = 0
    #: How the last request to the upstream ended ("ok", "upstream_unavailable", ...).
    last_upstream_outcome: str = "none yet"
    #: Prompts the upstream cut silently (see `upstream/truncation.py`), and what the last said
    #: while the upstream still cuts them (None once a prompt arrived whole).
    truncated_prompts: Counter = attrs.Factory(lambda: Counter({(): 0.0}))
    truncation: str | None = None


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if value == int(value) else repr(value)


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_value(value)}"
    inner = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels)
    return f"{name}{{{inner}}} {_value(value)}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    help_line = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {help_line}", f"# TYPE {name} {kind}", *samples]


def _histogram(name: str, help_text: str, histogram: Histogram) -> list[str]:
    samples = []
    for labels, counts in sorted(histogram.counts.items()):
        for bound, count in zip((*histogram.buckets, math.inf), counts, strict=True):
            samples.append(_sample(f"{name}_bucket", (*labels, ("le", _value(bound))), count))
        samples.append(_sample(f"{name}_sum", labels, histogram.sums[labels]))
        samples.append(_sample(f"{name}_count", labels, counts[-1]))
    return _family(name, "histogram", help_text, samples)


def _counter(name: str, help_text: str, counter: Counter) -> list[str]:
    return _family(name, "counter", help_text, (_sample(name, k, v) for k, v in sorted(counter.values.items())))


def _gauge(name: str, help_text: str, value: float) -> list[str]:
    return _family(name, "gauge", help_text, [_sample(name, (), value)])


def render(metrics: Metrics, totals: Totals) -> str:
    """The Prometheus text: the proxy's own counts, then the upstream's token totals."""
    return "\n".join([*_proxy_lines(metrics), *_token_lines(totals)]) + "\n"


def _proxy_lines(metrics: Metrics) -> list[str]:
    return [
        *_counter("scout_requests_total", "HTTP requests answered, by route, method and status.", metrics.requests),
        *_histogram("scout_request_duration_seconds", "Time to answer a request, by route.", metrics.request_seconds),
        *_histogram(
            "scout_upstream_first_byte_seconds",
            "Time from sending a request upstream to its first byte.",
            metrics.first_byte_seconds,
        ),
        *_gauge("scout_streams_in_flight", "Streaming answers being relayed now.", metrics.streams_in_flight),
        *_counter("scout_snapshot_builds_total", "Snapshot builds started.", metrics.snapshot_builds),
        *_histogram("scout_snapshot_build_seconds", "Time to build a snapshot.", metrics.build_seconds),
        *_gauge("scout_snapshot_bytes", "Size of the snapshot being served, in bytes of text.", metrics.snapshot_bytes),
        *_gauge("scout_diff_bytes", "Size of the last working diff sent, in bytes of text.", metrics.diff_bytes),
        *_counter("scout_rebases_total", "Snapshot rebases (moves of the base commit).", metrics.rebases),
        *_counter(
            "scout_truncated_prompts_total",
            "Prompts the upstream answered after cutting them (Ollama drops the front of an over-long prompt).",
            metrics.truncated_prompts,
        ),
        *_counter("scout_diff_folds_total", "Folds of the diff's commits into their net changes.", metrics.folds),
        *_gauge("scout_conversations", "Conversations kept now.", metrics.conversations_kept),
        *_counter(
            "scout_conversation_requests_total",
            "Conversations by outcome: new, continued, afresh (could not continue), evicted.",
            metrics.conversations,
        ),
        *_counter(
            "scout_change_bytes_total", "Bytes of work-tree changes inserted into conversations.", metrics.change_bytes
        ),
        *_counter("scout_warmups_total", "Warm-up requests sent upstream, by outcome.", metrics.warmups),
        *_counter(
            "scout_prompt_requests_total",
            "Chat prompts sent upstream with [upstream] prompt = tokens or auto, by path (tokens, text) and why.",
            metrics.prompts,
        ),
        *_counter(
            "scout_prompt_checks_total",
            "Checks of an epoch's token ids against the server's tokens of the whole prompt (match, mismatch), "
            "and of its conversations' grown ids against the tail's (conversation match, conversation mismatch).",
            metrics.prompt_checks,
        ),
        *_counter(
            "scout_unreadable_entries_total",
            "Entries of a tree or the work tree shown as stubs because they could not be read, by reason "
            "(each path and reason counted once).",
            metrics.unreadable,
        ),
        *_counter(
            "scout_prefix_breaks_total",
            "Requests whose cached prefix broke before their new turn, by region: snapshot, diff, system, history "
            "(see /status).",
            metrics.prefix_breaks,
        ),
    ]


def _token_lines(totals: Totals) -> list[str]:
    share = totals.snapshot_tokens_cached / totals.snapshot_tokens if totals.snapshot_tokens else 0.0
    return [
        *_family(
            "scout_upstream_prompt_tokens_total",
            "counter",
            "Prompt tokens the upstream reported.",
            [_sample("scout_upstream_prompt_tokens_total", (), totals.prompt_tokens)],
        ),
        *_family(
            "scout_upstream_cached_tokens_total",
            "counter",
            "Prompt tokens the upstream served from its cache.",
            [_sample("scout_upstream_cached_tokens_total", (), totals.cached_tokens)],
        ),
        *_family(
            "scout_api_prompt_tokens_total",
            "counter",
            "Prompt tokens the upstream reported, by the API the requests came in on (chat, responses, messages).",
            [
                _sample("scout_api_prompt_tokens_total", (("api", api),), both[0])
                for api, both in sorted(totals.by_api.items())
            ],
        ),
        *_family(
            "scout_api_cached_tokens_total",
            "counter",
            "Prompt tokens the upstream served from its cache, by the API the requests came in on.",
            [
                _sample("scout_api_cached_tokens_total", (("api", api),), both[1])
                for api, both in sorted(totals.by_api.items())
            ],
        ),
        *_gauge(
            "scout_snapshot_cached_ratio",
            "Share of the snapshot's tokens served from the upstream's cache, over all requests that reported it.",
            share,
        ),
    ]
