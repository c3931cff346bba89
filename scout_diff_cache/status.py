"""`GET /status.json` and `GET /status`: the cache made visible. One function gathers the figures
(`status_of`); the JSON is them, the page (`status_page.render_page`) and the terminal
(`render_text`, for `python -m scout_diff_cache status`) show them. Never a key, never message
contents beyond the few redacted bytes around a break (and those only here, not in /health)."""

from __future__ import annotations

from typing import Any

import attrs
from aiohttp import web

from .diagnosis import REGIONS, Diagnosis
from .metrics import Metrics
from .recent import Recent, Record
from .report import BYTES_PER_TOKEN
from .state import live_key, metrics_key, recent_key, tokens_key, warmups_key
from .status_page import render_page
from .warming import WarmUps


def diagnosis_fields(diagnosis: Diagnosis, quoted: bool = False) -> dict[str, Any]:
    """A diagnosis as JSON; `quoted`: with the few redacted bytes of each side of the break."""
    cached, recomputed, new = diagnosis.split()
    fields = {
        "prompt_tokens": diagnosis.prompt_tokens,
        "cached_tokens": diagnosis.cached_tokens,
        "expected_tokens": diagnosis.expected_tokens,
        "split": {"cached": cached, "recomputed": recomputed, "new": new},
        "cause": diagnosis.cause,
        "region": diagnosis.region,
        "broke": diagnosis.broke,
        "element": diagnosis.label,
        "offset": diagnosis.offset,
        "explanation": diagnosis.explain(),
    }
    return {**fields, "before": diagnosis.before, "now": diagnosis.now} if quoted else fields


def prefix_health(recent: Recent, metrics: Metrics) -> dict[str, Any]:
    """/health's part: the breaks by region, and the last request's diagnosis (no contents)."""
    last = recent.records[-1].diagnosis if recent.records else None
    breaks = {dict(labels)["region"]: int(count) for labels, count in sorted(metrics.prefix_breaks.values.items())}
    return {"breaks": breaks, "last": diagnosis_fields(last) if last is not None else None}


def _record(record: Record) -> dict[str, Any]:
    return {
        "at": record.at,
        "client": record.client,
        "api": record.api,
        "outcome": record.outcome,
        "conversation": record.conversation,
        **diagnosis_fields(record.diagnosis, quoted=True),
    }


def _warmup(warmups: WarmUps) -> dict[str, Any]:
    progress = warmups.progress()
    rate = sum(warmups.rates) / len(warmups.rates) if warmups.rates else None
    last = {"tokens": warmups.last[0], "seconds": warmups.last[1]} if warmups.last else None
    if progress is None:
        return {"state": "idle", "rate": rate, "last": last}
    return {
        "state": "running",
        "rate": rate,
        "last": last,
        "tokens": progress.tokens,
        "elapsed": progress.elapsed,
        "done": progress.done,
        "left": progress.left,
        "measured": progress.source,
    }


def status_of(app: web.Application) -> dict[str, Any]:
    """Every figure the page, the JSON and the terminal show."""
    live, metrics, recent = app[live_key], app[metrics_key], app[recent_key]
    recent.observe(metrics.rebases.total, metrics.folds.total)
    epochs = live.epochs.status()
    snapshot, terms = epochs.snapshot, live.config.context
    window = live.windows.known
    measured = snapshot.tokens if snapshot is not None else None
    if snapshot is not None and measured is None:
        measured = (
            app[tokens_key]
            .of(live.config.upstream.url, live.config.upstream.model)
            .count(snapshot.commit, snapshot.text_bytes)
        )
    return {
        "repository": str(live.config.repository.path),
        "inject": terms.inject,
        "snapshot": {
            "state": epochs.state,
            "commit": snapshot.commit if snapshot else None,
            "files": snapshot.files if snapshot else 0,
            "left_out": len(snapshot.left_out) + len(snapshot.excluded) if snapshot else 0,
            "bytes": snapshot.text_bytes if snapshot else 0,
            "tokens": measured if measured is not None else (snapshot.text_bytes // BYTES_PER_TOKEN if snapshot else 0),
            "tokens_measured": measured is not None,
            "error": epochs.last_error,
        },
        "window": {
            "tokens": window.tokens,
            "source": window.source,
            "split": attrs.asdict(live.split(window.tokens)) if window.tokens else None,
            "client": live.client_window(),
            "over_window": len(snapshot.over_window) if snapshot else 0,
        },
        "epochs": {
            "remembered": list(epochs.remembered),
            "builds": metrics.snapshot_builds.total,
            "rebases": metrics.rebases.total,
            "folds": metrics.folds.total,
        },
        "diff": {
            "bytes": metrics.diff_bytes,
            "budget": int(live.epochs.budget(snapshot)) if snapshot else None,
            "share": terms.rebase_diff_share,
            "floor": terms.rebase_min_diff_bytes,
        },
        "warmup": _warmup(app[warmups_key]),
        "requests": [_record(record) for record in recent.records],
        "events": [attrs.asdict(event) for event in recent.events],
        "clients": {name: attrs.asdict(figures) for name, figures in sorted(recent.clients.items())},
        "breaks": prefix_health(recent, metrics)["breaks"],
    }


async def status_json(request: web.Request) -> web.Response:
    return web.json_response(status_of(request.app), headers={"Cache-Control": "no-store"})


async def status_page(request: web.Request) -> web.Response:
    """The page: the same figures rendered on the server, so it reads with JavaScript off."""
    html = render_page(status_of(request.app))
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


def bar(done: float, width: int = 30) -> str:
    filled = round(max(0.0, min(1.0, done)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done:.0%}"


def render_text(status: dict[str, Any]) -> str:
    """The status for a terminal: the context, the warm-up with a progress bar, the last requests."""
    snapshot, diff, window, warmup = status["snapshot"], status["diff"], status["window"], status["warmup"]
    tokens = f"{snapshot['tokens']:,} tokens" + ("" if snapshot["tokens_measured"] else " (estimated)")
    lines = [
        f"repository  {status['repository']}",
        f"snapshot    {snapshot['state']}; {snapshot['commit'] or 'none'}; {snapshot['files']:,} files inlined, "
        f"{snapshot['left_out']:,} left out; {snapshot['bytes']:,} bytes, {tokens}",
        f"window      {window['tokens']:,} tokens ({window['source']})"
        if window["tokens"]
        else f"window      unknown ({window['source']})",
        f"epochs      remembered {', '.join(status['epochs']['remembered']) or 'none'}; "
        f"{status['epochs']['rebases']} rebases, {status['epochs']['folds']} folds",
        f"diff        {diff['bytes']:,} bytes of a {diff['budget'] or 0:,}-byte budget",
        warmup_line(warmup),
        "",
        "last requests (prompt tokens: cached / expected but recomputed / new):",
    ]
    for record in status["requests"][-10:]:
        split = record["split"]
        lines.append(
            f"  {record['client']:<8} {record['api']:<9} {split['cached']:>8,} / {split['recomputed']:>8,} / "
            f"{split['new']:>8,}  {record['explanation']}"
        )
    if not status["requests"]:
        lines.append("  (none yet)")
    breaks = ", ".join(f"{REGIONS.get(region, region)}: {count}" for region, count in status["breaks"].items())
    lines.append(f"prefix breaks  {breaks or 'none'}")
    return "\n".join(lines) + "\n"


def warmup_line(warmup: dict[str, Any]) -> str:
    """The warm-up's state; while one runs, a progress bar and the time left (from earlier rates)."""
    rate = f"{warmup['rate']:,.0f} tokens/s" if warmup["rate"] else "no rate measured yet"
    if warmup["state"] != "running":
        return f"warm-up     idle; {rate}"
    if warmup["done"] is None:
        return f"warm-up     running {warmup['elapsed']:.0f}s, ~{warmup['tokens']:,} tokens; {rate}"
    left = f"~{warmup['left']:.0f}s left of ~{warmup['tokens']:,} tokens"
    return f"warm-up     {bar(warmup['done'])} {left} ({warmup['measured']}; {rate})"
