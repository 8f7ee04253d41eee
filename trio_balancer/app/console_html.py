"""The console's HTML: server-rendered pages with inline SVG charts, no script, no external asset.

Pure functions of the data :mod:`.console` gathers. Every value from the ledger or the config is
escaped (a model name or a key name is text a client chose). Charts are stacked bars, one per
day or hour, each bar's parts titled with their numbers (a browser shows them on hover).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import attrs

from trio_balancer.policy.health_history import HealthEvent

__all__ = ["Overview", "bucket_label", "health_page", "overview_page", "record_page", "requests_page"]

esc = html.escape
PALETTE = ("#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#1b7c83", "#8c959f")
TOP = 6  # series drawn apart in a stacked chart; the rest are "other"
CSS = """
body{font:14px system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:10px 24px} header a{color:#fff;margin-right:18px;text-decoration:none}
header a.on{font-weight:700;border-bottom:2px solid #fff} main{padding:16px 24px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin:0 0 16px}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #d0d7de;padding:4px 8px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums} .kpi{display:inline-block;margin:0 28px 8px 0}
.kpi b{display:block;font-size:22px} .muted{color:#57606a} .bad{color:#cf222e} .tag{border-radius:8px;padding:1px 8px;color:#fff}
.bar{height:8px;background:#d0d7de;border-radius:4px;overflow:hidden;min-width:120px}.bar i{display:block;height:8px;background:#1a7f37}
.bar i.over{background:#cf222e} form label{margin-right:12px} input,select{font:inherit}
nav.pick a{margin-right:10px} nav.pick a.on{font-weight:700} svg text{font-size:10px;fill:#57606a}
"""


def bucket_label(bucket: int, width: int) -> str:
    """A bucket (an index of local days or hours) as the local date or hour it is."""
    moment = datetime.fromtimestamp(bucket * width, UTC)  # local time, counted as if UTC
    return moment.strftime("%Y-%m-%d") if width == 86400 else moment.strftime("%m-%d %H:00")


def _layout(title: str, active: str, body: str) -> str:
    links = [("/console", "Spend"), ("/console/requests", "Requests"), ("/console/health", "Health"),
             ("/status", "Live")]  # fmt: skip
    nav = "".join(
        f'<a href="{href}"{" class=on" if href == active else ""}>{name}</a>' for href, name in links
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} - trio-balancer</title><style>{CSS}</style></head>"
        f"<body><header><b style='margin-right:24px'>trio-balancer</b>{nav}</header><main>{body}</main></body></html>"
    )


def _money(value: float) -> str:
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:,.4f}"


def _count(value: float) -> str:
    return f"{int(value):,}"


# -- charts ------------------------------------------------------------------------------------


def stacked_bars(
    buckets: Sequence[int],
    parts: Mapping[str, Mapping[int, float]],
    *,
    width_s: int,
    title: str,
    fmt: Callable[[float], str],
) -> str:
    """An SVG of one bar per bucket, stacked from ``parts`` (name -> bucket -> value)."""
    w, h, left, bottom = 900, 200, 56, 22
    totals = [sum(p.get(b, 0.0) for p in parts.values()) for b in buckets]
    top = max(totals, default=0.0) or 1.0
    step = (w - left) / max(1, len(buckets))
    bar = max(1.0, step * 0.8)
    shapes = []
    for i, b in enumerate(buckets):
        x, y = left + i * step, float(h - bottom)
        for colour, (name, series) in zip(PALETTE, parts.items(), strict=False):
            value = series.get(b, 0.0)
            if value <= 0:
                continue
            height = value / top * (h - bottom - 10)
            y -= height
            tip = f"{bucket_label(b, width_s)} {name}: {fmt(value)}"
            shapes.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{esc(tip)}</title></rect>"
            )
    every = max(1, len(buckets) // 8)
    ticks = "".join(
        f'<text x="{left + i * step:.1f}" y="{h - 6}">{esc(bucket_label(b, width_s))}</text>'
        for i, b in enumerate(buckets)
        if i % every == 0
    )
    legend = " ".join(
        f'<span style="color:{c}">&#9632;</span> {esc(name)}' for c, name in zip(PALETTE, parts, strict=False)
    )
    return (
        f"<figure style='margin:0'><figcaption><b>{esc(title)}</b> <span class=muted>max {esc(fmt(top))}"
        f"</span><br>{legend}</figcaption>"
        f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{esc(title)}">'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w}" y2="{h - bottom}" stroke="#8c959f"/>'
        f'<text x="0" y="14">{esc(fmt(top))}</text><text x="0" y="{h - bottom}">0</text>'
        f"{''.join(shapes)}{ticks}</svg></figure>"
    )


def _parts(rows: Sequence[Mapping[str, Any]], by: str | None, field: str) -> dict[str, dict[int, float]]:
    """Rows of a series as name -> bucket -> value; past the TOP largest names, "other"."""
    totals: dict[str, float] = {}
    for row in rows:
        name = str(row.get(by) or "-") if by else "all"
        totals[name] = totals.get(name, 0.0) + float(row[field] or 0)
    keep = set(sorted(totals, key=lambda n: -totals[n])[:TOP])
    out: dict[str, dict[int, float]] = {n: {} for n in sorted(keep, key=lambda n: -totals[n])}
    for row in rows:
        name = str(row.get(by) or "-") if by else "all"
        name = name if name in keep else "other"
        series = out.setdefault(name, {})
        series[row["bucket"]] = series.get(row["bucket"], 0.0) + float(row[field] or 0)
    return out


# -- pages -------------------------------------------------------------------------------------


@attrs.frozen
class Overview:
    span: str  # "30d" | "48h"
    by: str  # "client" | "model" | "provider"
    zone: str  # the zone the buckets are in
    zone_asked: str  # [server] budget_timezone
    width: int  # 86400 | 3600
    buckets: list[int]
    totals: list[dict[str, Any]]  # series rows, no split
    split: list[dict[str, Any]]  # series rows split by ``by``
    budgets: list[dict[str, Any]]
    since: float  # the first bucket's start
    until: float  # now


def overview_page(o: Overview) -> str:
    shown = set(o.buckets)
    totals = [r for r in o.totals if r["bucket"] in shown]
    split = [r for r in o.split if r["bucket"] in shown]
    sums = {
        k: sum(float(r[k] or 0) for r in totals)
        for k in ("requests", "cost_usd", "tokens", "errors", "flagged")
    }
    picks = (
        " ".join(
            _pick(f"/console?{urlencode({'range': span, 'by': o.by})}", span, span == o.span)
            for span in ("30d", "48h")
        )
        + " &middot; split by "
        + " ".join(
            _pick(f"/console?{urlencode({'range': o.span, 'by': by})}", by, by == o.by)
            for by in ("client", "model", "provider")
        )
    )
    zone_note = (
        f"days and hours of {esc(o.zone)}"
        if o.zone == o.zone_asked
        else f"days and hours of UTC ({esc(o.zone_asked)} has a UTC offset of part of an hour)"
    )
    kpis = "".join(
        f"<span class=kpi><b>{value}</b>{label}</span>"
        for value, label in (
            (_money(sums["cost_usd"]), "spent"),
            (_count(sums["tokens"]), "tokens"),
            (_count(sums["requests"]), "requests"),
            (_count(sums["errors"]), "errors"),
            (_count(sums["flagged"]), "flagged (estimated or unpriced)"),
        )
    )
    what = "per day, last 30 days" if o.width == 86400 else "per hour, last 48 hours"
    charts = "".join(
        stacked_bars(o.buckets, _parts(split, o.by, field), width_s=o.width, title=f"{title} {what}", fmt=fmt)
        for field, title, fmt in (
            ("cost_usd", "Spend", _money),
            ("tokens", "Tokens", _count),
            ("requests", "Requests", _count),
        )
    )
    body = (
        f"<section><nav class=pick>{picks}</nav><p class=muted>{zone_note}; from "
        f"{esc(bucket_label(o.buckets[0], o.width))}</p>{kpis}</section>"
        f"<section>{charts}</section>"
        f"<section><h2>By {esc(o.by)}</h2>{_breakdown(split, o.by)}</section>"
        f"<section><h2>Budgets</h2>{_budgets(o.budgets)}</section>"
    )
    return _layout("Spend", "/console", body)


def _pick(href: str, label: str, on: bool) -> str:
    return f'<a href="{esc(href)}"{" class=on" if on else ""}>{esc(label)}</a>'


def _breakdown(rows: Sequence[Mapping[str, Any]], by: str) -> str:
    sums: dict[str, dict[str, float]] = {}
    for row in rows:
        name = str(row.get(by) or "-")
        acc = sums.setdefault(name, {"requests": 0, "cost_usd": 0.0, "tokens": 0, "errors": 0, "flagged": 0})
        for k in acc:
            acc[k] += float(row[k] or 0)
    if not sums:
        return "<p class=muted>No requests in this range.</p>"
    filter_key = by
    lines = "".join(
        f'<tr><td><a href="/console/requests?{esc(urlencode({filter_key: name}))}">{esc(name)}</a></td>'
        f"<td class=n>{_count(s['requests'])}</td><td class=n>{_money(s['cost_usd'])}</td>"
        f"<td class=n>{_count(s['tokens'])}</td><td class=n>{_count(s['errors'])}</td>"
        f"<td class=n>{_count(s['flagged'])}</td></tr>"
        for name, s in sorted(sums.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
    )
    return (
        f"<table><tr><th>{esc(by)}</th><th class=n>requests</th><th class=n>spent</th><th class=n>tokens</th>"
        f"<th class=n>errors</th><th class=n>flagged</th></tr>{lines}</table>"
    )


def _budgets(budgets: Sequence[Mapping[str, Any]]) -> str:
    if not budgets:
        return "<p class=muted>No client key has a budget (<code>budget_usd</code>, <code>tokens</code>).</p>"
    lines = []
    for item in budgets:
        for b in item["budgets"]:
            fmt = _money if b["what"] == "usd" else _count
            used = min(1.0, b["spent"] / b["limit"]) if b["limit"] else 1.0
            resets = datetime.fromtimestamp(b["resets_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(
                f"<tr><td>{esc(item['client'])}</td><td>{esc(b['what'])} / {esc(b['period'])}</td>"
                f"<td class=n>{fmt(b['limit'])}</td><td class=n>{fmt(b['spent'])}</td>"
                f"<td class=n{' bad' if b['exhausted'] else ''}>{fmt(b['left'])}</td>"
                f'<td><div class=bar><i class="{"over" if b["exhausted"] else ""}" style="width:{used * 100:.0f}%"></i></div></td>'
                f"<td>{esc(resets)}</td></tr>"
            )
    return (
        "<table><tr><th>key</th><th>budget</th><th class=n>limit</th><th class=n>spent</th><th class=n>left</th>"
        f"<th>used</th><th>resets</th></tr>{''.join(lines)}</table>"
    )


_FILTERS = (("client", "key"), ("model", "model"), ("provider", "provider"), ("status", "status"),
            ("since", "since"), ("until", "until"))  # fmt: skip


def requests_page(
    q: Mapping[str, str], rows: Sequence[Mapping[str, Any]], cursor: str | None, tz: ZoneInfo
) -> str:
    fields = "".join(
        f'<label>{label} <input name="{name}" value="{esc(q.get(name, ""))}" size="{14 if name != "status" else 6}"></label>'
        for name, label in _FILTERS
    )
    checked = " checked" if q.get("flagged") in ("1", "on", "true") else ""
    form = (
        f'<form method="get" action="/console/requests">{fields}'
        f'<label><input type="checkbox" name="flagged" value="1"{checked}> flagged only</label>'
        '<button type="submit">Filter</button> <a href="/console/requests">clear</a></form>'
        "<p class=muted>status: ok, error or a code; times: 2026-11-01, 2026-11-01T08:00:00 (UTC) or unix seconds</p>"
    )
    lines = (
        "".join(_request_row(row, tz) for row in rows) or '<tr><td colspan="9">No requests match.</td></tr>'
    )
    kept = {k: v for k, v in q.items() if k not in ("before",) and v}
    pages = '<a href="/console/requests?' + esc(urlencode(kept)) + '">newest</a>'
    if cursor is not None:
        pages += (
            ' &middot; <a rel="next" href="/console/requests?'
            + esc(urlencode({**kept, "before": cursor}))
            + '">older &rarr;</a>'
        )
    table = (
        "<table><tr><th>started</th><th>key</th><th>model</th><th>provider</th><th class=n>status</th>"
        "<th class=n>tokens</th><th class=n>cost</th><th>usage</th><th class=n>attempts</th></tr>"
        f"{lines}</table><p>{pages}</p>"
    )
    return _layout("Requests", "/console/requests", f"<section>{form}</section><section>{table}</section>")


def _when(at: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S")


def _request_row(row: Mapping[str, Any], tz: ZoneInfo) -> str:
    tokens = (
        row["input_tokens"]
        + row["output_tokens"]
        + row["cache_creation_input_tokens"]
        + row["cache_read_input_tokens"]
    )
    status = row["status"]
    cost = "-" if row["cost_usd"] is None else _money(row["cost_usd"])
    return (
        f'<tr><td><a href="/console/requests/{esc(quote(row["id"], safe=""))}">{esc(_when(row["started_at"], tz))}</a></td>'
        f"<td>{esc(row['client'])}</td><td>{esc(row['model'] or '-')}</td><td>{esc(row['provider'] or '-')}</td>"
        f'<td class="n{" bad" if status is None or status >= 400 else ""}">{esc(str(status))}</td>'
        f"<td class=n>{_count(tokens)}</td><td class=n>{cost}</td>"
        f"<td>{esc(row['usage_source'])}{' &#9873;' if row['flagged'] else ''}</td>"
        f"<td class=n>{len(row['attempts'])}</td></tr>"
    )


def record_page(record: Mapping[str, Any], tz: ZoneInfo) -> str:
    skip = {"attempts"}
    fields = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_when(v, tz) + ' (' + str(v) + ')' if k == 'started_at' else str(v))}</td></tr>"
        for k, v in record.items()
        if k not in skip
    )
    attempts = (
        "".join(
            f"<tr><td>{i + 1}</td><td>{esc(str(a.get('provider')))}</td><td>{esc(str(a.get('model')))}</td>"
            f"<td>{esc(str(a.get('status', '')))}</td>"
            f"<td>{esc(str(a.get('error') or ('served' if i == len(record['attempts']) - 1 else '')))}</td></tr>"
            for i, a in enumerate(record["attempts"])
        )
        or '<tr><td colspan="5">No provider was tried (refused before, or answered from the cache).</td></tr>'
    )
    body = (
        f"<section><h2>Request {esc(record['id'])}</h2><table>{fields}</table></section>"
        "<section><h2>Attempts</h2><p class=muted>In order; each failed one says why the request moved on.</p>"
        f"<table><tr><th>#</th><th>provider</th><th>model</th><th>status</th><th>outcome</th></tr>{attempts}</table>"
        f"<details><summary>raw</summary><pre>{esc(json.dumps(record['attempts'], indent=1))}</pre></details></section>"
    )
    return _layout(f"Request {record['id']}", "/console/requests", body)


_STATE_COLOUR = {"healthy": "#1a7f37", "cooling": "#bf3989", "half_open": "#9a6700"}


def health_page(
    *,
    providers: Sequence[Mapping[str, Any]],
    events: Sequence[HealthEvent],
    failovers: Mapping[str, Sequence[int]],
    reasons: Mapping[str, Mapping[str, int]],
    now: float,
    zone: ZoneInfo,
) -> str:
    rows = "".join(
        f"<tr><td>{esc(p['name'])}</td><td>{esc(p['kind'])}</td>"
        f'<td><span class=tag style="background:{_STATE_COLOUR.get(p["state"], "#57606a")}">{esc(p["state"])}</span></td>'
        f"<td class=n>{p['cooldown_remaining_s']:g} s</td><td class=n>{p['counters'].get('requests', 0)}</td>"
        f"<td>{esc(', '.join(f'{k} {v}' for k, v in sorted(reasons.get(p['name'], {}).items())) or '-')}</td>"
        f"<td>{esc(p['last_error'] or '')}</td></tr>"
        for p in providers
    )
    hours = max((len(counts) for counts in failovers.values()), default=48)
    hour0 = int(now // 3600) - hours + 1
    offset_s = int((datetime.fromtimestamp(now, zone).utcoffset() or timedelta(0)).total_seconds())
    offset = offset_s // 3600 if offset_s % 3600 == 0 else 0  # a half-hour zone: hours of UTC
    shifted = [b + offset for b in range(hour0, hour0 + hours)]
    parts = {name: dict(zip(shifted, counts, strict=True)) for name, counts in failovers.items()}
    chart = (
        stacked_bars(
            shifted, parts, width_s=3600, title="Failovers away from each provider per hour", fmt=_count
        )
        if parts
        else "<p class=muted>No failover since this balancer started.</p>"
    )
    changes = (
        "".join(
            f"<tr><td>{esc(_when(e.at, zone))}</td><td>{esc(e.provider)}</td>"
            f'<td><span class=tag style="background:{_STATE_COLOUR.get(e.state, "#57606a")}">{esc(e.state)}</span></td>'
            f"<td class=n>{e.cooling_for_s:.0f} s</td><td>{esc(e.reason or '')}</td></tr>"
            for e in events
        )
        or '<tr><td colspan="5">No state change since this balancer started.</td></tr>'
    )
    body = (
        "<section><h2>Providers now</h2><table><tr><th>name</th><th>kind</th><th>state</th><th class=n>cooldown</th>"
        f"<th class=n>requests</th><th>failovers by reason</th><th>last error</th></tr>{rows}</table></section>"
        f"<section>{chart}</section>"
        "<section><h2>State changes</h2><p class=muted>Newest first, as this instance saw them (other instances'"
        " through Redis).</p><table><tr><th>when</th><th>provider</th><th>state</th><th class=n>cooldown</th>"
        f"<th>why</th></tr>{changes}</table></section>"
    )
    return _layout("Health", "/console/health", body)
