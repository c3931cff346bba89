"""The status page's HTML, rendered on the server from `status.status_of`'s figures: it reads the
same with JavaScript off. A few lines of script poll `/status.json` and, when a figure changed,
fetch the page again and swap its body in, so the page is rendered in one place only. Plain HTML,
CSS and an inline SVG chart: no build step, no CDN, no framework."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from .diagnosis import REGIONS

#: The chart's drawing box (the SVG scales to the page's width).
WIDTH, HEIGHT, GAP = 960, 220, 2
COLOURS = {"cached": "#2f9e5b", "recomputed": "#d64545", "new": "#9aa5b1"}

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:10px 20px}header h1{font-size:18px;margin:0}
main{padding:12px 20px;max-width:1200px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;margin-bottom:12px}
h2{font-size:14px;margin:0 0 6px;color:#4a5560;text-transform:uppercase;letter-spacing:.04em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dt{color:#4a5560}dd{margin:0}
.meter{height:10px;background:#e6e9ed;border-radius:5px;overflow:hidden}.meter span{display:block;height:100%;background:#3b7dd8}
.meter.over span{background:#d64545}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eef0f2}
th{color:#4a5560;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f0f2f4;padding:0 3px;border-radius:3px;white-space:pre-wrap;word-break:break-all}
.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;border-radius:2px}
.break{color:#b02a2a;font-weight:600}svg{width:100%;height:auto;display:block}
"""

SCRIPT = """
(function () {
  var seen = null;
  function poll() {
    fetch("status.json", {cache: "no-store"}).then(function (answer) { return answer.text(); })
      .then(function (figures) {
        if (figures === seen) { return null; }
        seen = figures;
        return fetch(location.pathname, {cache: "no-store"}).then(function (page) { return page.text(); })
          .then(function (html) {
            var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
            document.querySelector("main").replaceWith(fresh);
          });
      }).catch(function () {}).then(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
"""


def _number(value: float | None, unit: str = "") -> str:
    return "unknown" if value is None else f"{value:,.0f}{unit}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _meter(share: float, over: bool = False) -> str:
    width = max(0.0, min(1.0, share)) * 100
    return f'<div class="meter{" over" if over else ""}"><span style="width:{width:.1f}%"></span></div>'


def _rows(pairs: list[tuple[str, str, str]]) -> str:
    """A definition list of (label, figure's name for tests, HTML value)."""
    return (
        "<dl>"
        + "".join(f'<dt>{label}</dt><dd data-figure="{name}">{value}</dd>' for label, name, value in pairs)
        + "</dl>"
    )


def _context(status: dict[str, Any]) -> str:
    snapshot, diff, window, epochs = status["snapshot"], status["diff"], status["window"], status["epochs"]
    tokens = f"{_number(snapshot['tokens'])} tokens" + ("" if snapshot["tokens_measured"] else " (estimated)")
    budget = diff["budget"] or 0
    share = diff["bytes"] / budget if budget else 0.0
    context = [
        ("state", "snapshot.state", escape(snapshot["state"])),
        ("commit", "snapshot.commit", f"<code>{escape(snapshot['commit'] or 'none')}</code>"),
        ("files", "snapshot.files", f"{snapshot['files']:,} inlined, {snapshot['left_out']:,} left out"),
        ("size", "snapshot.bytes", f"{snapshot['bytes']:,} bytes, {tokens}"),
        ("window", "window.tokens", f"{_number(window['tokens'])} tokens ({escape(window['source'])})"),
    ]
    if window["split"]:
        parts = window["split"]
        shared = ", ".join(f"{name} {parts[name]:,}" for name in ("snapshot", "diff", "conversation", "answer"))
        context.append(("split", "window.split", f"{shared} tokens; {window['over_window']:,} files over the window"))
        context.append(("client room", "window.client", f"{window['client']:,} tokens"))
    if snapshot["error"]:
        context.append(("error", "snapshot.error", f'<span class="break">{escape(snapshot["error"])}</span>'))
    remembered = ", ".join(f"<code>{escape(commit[:12])}</code>" for commit in epochs["remembered"]) or "none"
    kept = [
        ("remembered", "epochs.remembered", remembered),
        ("builds", "epochs.builds", str(epochs["builds"])),
        ("rebases", "epochs.rebases", str(epochs["rebases"])),
        ("folds", "epochs.folds", str(epochs["folds"])),
        ("diff", "diff.bytes", f"{diff['bytes']:,} of {budget:,} bytes" + _meter(share, share > 1)),
        (
            "budget",
            "diff.budget",
            f"the larger of {diff['share']:.0%} of the snapshot and {diff['floor']:,} bytes, at most the diff's part of the window",
        ),
    ]
    return (
        f"<section><h2>Snapshot</h2>{_rows(context)}</section><section><h2>Epochs and diff</h2>{_rows(kept)}</section>"
        f"<section><h2>Warm-up</h2>{_warmup(status['warmup'])}</section>"
    )


def _warmup(warmup: dict[str, Any]) -> str:
    rate = f"{warmup['rate']:,.0f} tokens/s" if warmup["rate"] else "none measured yet"
    last = warmup["last"]
    rows = [("state", "warmup.state", escape(warmup["state"])), ("prefill rate", "warmup.rate", rate)]
    if last:
        rows.append(("last", "warmup.last", f"{last['tokens']:,} tokens in {last['seconds']:.1f}s"))
    if warmup["state"] == "running":
        rows.append(("prefilling", "warmup.tokens", f"~{warmup['tokens']:,} tokens, {warmup['elapsed']:.0f}s so far"))
        if warmup["done"] is not None:
            left = f"{warmup['done']:.0%}, ~{warmup['left']:.0f}s left ({escape(warmup['measured'])})"
            left += _meter(warmup["done"])
            rows.append(("progress", "warmup.done", left))
    return _rows(rows)


def _chart(status: dict[str, Any]) -> str:
    """The last requests as stacked bars (cached, expected but recomputed, new), the hit rate as a
    line on the same requests, and rebases and folds as marks where they fell between them."""
    requests = status["requests"]
    if not requests:
        return '<p id="chart-empty">No requests yet.</p>'
    tallest = max(record["prompt_tokens"] or 0 for record in requests) or 1
    step = WIDTH / len(requests)
    shapes, rate_points = [], []
    for index, record in enumerate(requests):
        x, bottom = index * step, float(HEIGHT)
        for part in ("cached", "recomputed", "new"):
            height = record["split"][part] / tallest * HEIGHT
            bottom -= height
            shapes.append(
                f'<rect class="{part}" x="{x + GAP / 2:.1f}" y="{bottom:.1f}" width="{max(1.0, step - GAP):.1f}" '
                f'height="{height:.1f}" fill="{COLOURS[part]}"><title>{escape(_tip(record))}</title></rect>'
            )
        if record["prompt_tokens"]:
            hit = record["split"]["cached"] / record["prompt_tokens"]
            rate_points.append(f"{x + step / 2:.1f},{HEIGHT - hit * HEIGHT:.1f}")
    for event in status["events"]:
        after = sum(1 for record in requests if record["at"] < event["at"])
        x = after * step
        colour = "#6a3fc9" if event["kind"] == "rebase" else "#c98a1b"
        shapes.append(
            f'<line class="event {event["kind"]}" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{HEIGHT}" stroke="{colour}" '
            f'stroke-dasharray="4 3"><title>{event["kind"]} at {_clock(event["at"])}</title></line>'
        )
    line = f'<polyline points="{" ".join(rate_points)}" fill="none" stroke="#1d232b" stroke-width="1.5"/>'
    key = "".join(f'<span style="background:{colour}"></span>{part}' for part, colour in COLOURS.items())
    return (
        f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="prompt tokens of the last '
        f'{len(requests)} requests">{"".join(shapes)}{line}</svg><p class="key">tallest bar {tallest:,} tokens;'
        f"{key}<span style='background:#1d232b;height:2px'></span>hit rate (0 to 100%)"
        f"<span style='background:#6a3fc9'></span>rebase<span style='background:#c98a1b'></span>fold</p>"
    )


def _tip(record: dict[str, Any]) -> str:
    split = record["split"]
    return (
        f"{_clock(record['at'])} {record['client']} {record['api']}: {split['cached']:,} cached, "
        f"{split['recomputed']:,} recomputed, {split['new']:,} new. {record['explanation']}"
    )


def _requests(status: dict[str, Any]) -> str:
    rows = []
    for record in reversed(status["requests"]):
        split = record["split"]
        quoted = (
            f"<br><code>{escape(record['before'])}</code> → <code>{escape(record['now'])}</code>"
            if record["before"] or record["now"]
            else ""
        )
        cause = f'<span class="break">{record["cause"]}</span>' if record["broke"] else escape(record["cause"])
        rows.append(
            f"<tr><td>{_clock(record['at'])}</td><td>{escape(record['client'])}</td><td>{escape(record['api'])}</td>"
            f"<td>{escape(record['conversation'] or '')}</td><td class='n'>{_number(record['prompt_tokens'])}</td>"
            f"<td class='n'>{split['cached']:,}</td><td class='n'>{split['recomputed']:,}</td>"
            f"<td class='n'>{split['new']:,}</td><td>{escape(REGIONS.get(record['region'] or '', 'unknown'))}</td>"
            f"<td>{cause}: {escape(record['explanation'])}{quoted}</td></tr>"
        )
    head = (
        "<tr><th>time</th><th>client</th><th>API</th><th>conversation</th><th>prompt</th><th>cached</th>"
        "<th>recomputed</th><th>new</th><th>cached to</th><th>why</th></tr>"
    )
    return f'<table id="requests">{head}{"".join(rows)}</table>'


def _clients(status: dict[str, Any]) -> str:
    rows = [
        f"<tr><td>{escape(name)}</td><td class='n'>{figures['requests']:,}</td>"
        f"<td class='n'>{figures['conversations']:,}</td><td class='n'>"
        f"{figures['cached_tokens'] / figures['prompt_tokens']:.0%}</td></tr>"
        if figures["prompt_tokens"]
        else f"<tr><td>{escape(name)}</td><td class='n'>{figures['requests']:,}</td>"
        f"<td class='n'>{figures['conversations']:,}</td><td class='n'>unknown</td></tr>"
        for name, figures in status["clients"].items()
    ]
    breaks = ", ".join(f"{REGIONS.get(region, region)}: {count}" for region, count in status["breaks"].items())
    return (
        "<table id='clients'><tr><th>client</th><th>requests</th><th>conversations started</th><th>hit rate</th></tr>"
        f"{''.join(rows)}</table><p>Prefix breaks by region: <span data-figure='breaks'>{breaks or 'none'}</span></p>"
    )


def render_page(status: dict[str, Any]) -> str:
    """The whole page for `status` (see `status.status_of`)."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>scout-diff-cache status</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head><body>'
        f"<header><h1>scout-diff-cache · <span data-figure='repository'>{escape(status['repository'])}</span></h1>"
        f"</header><main><div class='cards'>{_context(status)}</div>"
        f"<section><h2>Last requests: prompt tokens</h2>{_chart(status)}</section>"
        f"<section><h2>Where each prompt's cached prefix ended</h2>{_requests(status)}</section>"
        f"<section><h2>Clients</h2>{_clients(status)}</section></main>"
        f"<script>{SCRIPT}</script></body></html>"
    )
