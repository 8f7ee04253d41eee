"""``/status`` and ``/status.json``: what an operator needs at a glance, without Grafana.

The data is gathered from the app's live state and recent per-minute stats; the page is plain
server-rendered HTML with an inline SVG chart, no script and no external asset, refreshing
itself every few seconds.
"""

from __future__ import annotations

import html
import os
import time
from typing import TYPE_CHECKING, Any

import attrs

from trio_balancer import __version__
from trio_balancer.app.workers import WORKER_ENV
from trio_balancer.ledger import Ledger
from trio_balancer.policy.stats import Minute

if TYPE_CHECKING:
    from trio_balancer.app.view import OperatorView

__all__ = ["REFRESH_S", "render_html", "status_data"]

REFRESH_S = 5
CHART_MINUTES = 30


def status_data(view: OperatorView) -> dict[str, Any]:
    state = view.state
    now_wall = time.time()
    providers = view.providers()
    for p in providers:
        c = p["counters"]
        failures = sum(c[k] for k in ("rate_limited", "overloaded", "auth", "server", "connect", "timeout"))
        p["error_rate"] = round(failures / c["requests"], 4) if c["requests"] else 0.0
    minutes = state.stats.window(now_wall)
    hour = {
        "requests": sum(m.requests for m in minutes),
        "errors": sum(m.errors for m in minutes),
        "input_tokens": sum(m.input_tokens for m in minutes),
        "output_tokens": sum(m.output_tokens for m in minutes),
    }
    streams = [attrs.asdict(f) for f in view.flights()]
    return {
        "version": __version__,
        "time": now_wall,
        "uptime_s": round(view.uptime_s(), 1),
        "tasks": view.task_count(),
        "config": state.config.source,
        "failure": view.failure,
        "providers": providers,
        "live_streams": streams,
        "last_hour": hour,
        "minutes": [
            {
                "start": m.start * 60,
                "requests": m.requests,
                "errors": m.errors,
                "ttfb_ms": m.ttfb_ms,
                "forward_us": m.forward_us,
                "forward_max_us": round(m.forward_max * 1e6, 1),
            }
            for m in minutes[-CHART_MINUTES:]
        ],
        "dedup": {
            "cache_entries": len(state.cache),
            "cache_bytes": state.cache.bytes,
            "shared_flights": view.shared_flights(),
        },
        "ledger": None if state.ledger is None else _ledger_view(state.ledger),
        "cluster": None if state.cluster is None else state.cluster.view(),
        "alerts": None if state.notifier is None else state.notifier.view(),
        "budgets": state.budgets.status(),
        # "i/N" under serve --workers: this page is that worker's (each has its own flights).
        "worker": os.environ.get(WORKER_ENV),
        "pid": os.getpid(),
    }


def _ledger_view(ledger: Ledger) -> dict[str, Any]:
    return {
        "path": ledger.path,
        "written": ledger.written,
        "spilled": ledger.spilled,
        "backlog": ledger.backlog,
        "lost": ledger.lost,
        "degraded": ledger.degraded,
    }


_STATE_COLOUR = {"healthy": "#1a7f37", "cooling": "#bf3989", "half_open": "#9a6700"}


def _chart(minutes: list[Minute] | list[dict[str, Any]], key: str, label: str, unit: str, colour: str) -> str:
    values = [m[key] if isinstance(m, dict) else getattr(m, key) for m in minutes]
    known = [v for v in values if v is not None]
    width, height, pad = 560, 120, 30
    top = max(known) if known else 1.0
    top = top or 1.0
    step = (width - 2 * pad) / max(1, len(values) - 1)  # margins so the newest dot is not clipped
    xy = [
        (pad + i * step, height - 15 - (v / top) * (height - 30))
        for i, v in enumerate(values)
        if v is not None
    ]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in xy)
    return (
        f"<figure><figcaption>{html.escape(label)} (max {top:g} {unit})</figcaption>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{html.escape(label)}">'
        f'<line x1="{pad}" y1="{height - 15}" x2="{width}" y2="{height - 15}" stroke="#999"/>'
        f'<text x="0" y="12" font-size="10">{top:g}</text><text x="0" y="{height - 15}" font-size="10">0</text>'
        f'<text x="{pad}" y="{height - 2}" font-size="10">-{len(values)} min</text>'
        f'<text x="{width - pad - 10}" y="{height - 2}" font-size="10">now</text>'
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>{dots}</svg></figure>'
    )


def render_html(data: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for p in data["providers"]:
        colour = _STATE_COLOUR.get(p["state"], "#57606a")
        rows.append(
            "<tr>"
            f"<td>{esc(p['name'])}</td><td>{esc(p['kind'])}</td>"
            f'<td><span class="state" style="background:{colour}">{esc(p["state"])}</span></td>'
            f"<td>{p['cooldown_remaining_s']:g} s</td>"
            f"<td>{p['error_rate'] * 100:.1f} %</td>"
            f"<td>{'' if p['ttfb_ewma_ms'] is None else p['ttfb_ewma_ms']}</td>"
            f"<td>{p['in_flight']}</td>"
            f"<td>{p['counters']['requests']}</td>"
            f"<td>{esc(p['last_error'] or '')}</td>"
            "</tr>"
        )
    streams = (
        "".join(
            f"<tr><td>{esc(s['model'])}</td><td>{esc(s['provider'] or '')}</td><td>{s['listeners']}</td>"
            f"<td>{s['events']}</td><td>{s['bytes']}</td><td>{'streaming' if s['committed'] else 'waiting'}</td></tr>"
            for s in data["live_streams"]
        )
        or '<tr><td colspan="6">none</td></tr>'
    )
    h = data["last_hour"]
    warnings = []
    if data.get("failure"):
        warnings.append(f"The balancer has failed and is not serving: {esc(data['failure'])}")
    ledger = data.get("ledger")
    if ledger and ledger["degraded"]:
        warnings.append(
            f"Usage ledger degraded: {ledger['spilled']} records spilled, {ledger['backlog']} held in memory"
            f" waiting for {esc(str(ledger['path']))}, {ledger['lost']} lost"
        )
    banner = "".join(f'<p class="warn">{w}</p>' for w in warnings)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>trio-balancer status</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#1f2328}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left}} .state{{color:#fff;border-radius:8px;padding:1px 8px}}
.warn{{background:#ffebe9;border:1px solid #cf222e;padding:6px 10px;border-radius:6px}}
.kpi{{display:inline-block;margin-right:2em}} .kpi b{{font-size:20px;display:block}} figure{{display:inline-block;margin:0 2em 0 0}}
</style></head><body>
<h1>trio-balancer <small>{esc(data["version"])}</small></h1>
{banner}<p>{esc(data["config"])} &middot; up {data["uptime_s"]:g} s &middot; refreshes every {REFRESH_S} s &middot; <a href="/status.json">JSON</a> &middot; <a href="/metrics">metrics</a></p>
<div><span class="kpi"><b>{h["requests"]}</b>requests, last hour</span><span class="kpi"><b>{h["errors"]}</b>errors</span>
<span class="kpi"><b>{h["input_tokens"]}</b>input tokens</span><span class="kpi"><b>{h["output_tokens"]}</b>output tokens</span>
<span class="kpi"><b>{len(data["live_streams"])}</b>live streams</span></div>
<h2>Providers</h2>
<table><tr><th>name</th><th>kind</th><th>state</th><th>cooldown</th><th>error rate</th><th>TTFB ms</th><th>in flight</th><th>requests</th><th>last error</th></tr>
{"".join(rows)}</table>
<h2>Last {CHART_MINUTES} minutes</h2>
{_chart(data["minutes"], "ttfb_ms", "Time to first byte, average per minute", "ms", "#0969da")}
{_chart(data["minutes"], "forward_us", "Forward latency per event, average per minute", "us", "#8250df")}
<h2>Live streams</h2>
<table><tr><th>model</th><th>provider</th><th>listeners</th><th>events</th><th>bytes</th><th>state</th></tr>{streams}</table>
</body></html>
"""
