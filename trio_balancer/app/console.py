"""The operator console's pages: what each one reads, and from where.

``/console``: spend, tokens and requests per local day (30 days) or hour (48 h) from the
ledger's hourly rollup, split by key, model or provider, with the budgets and what is left.
``/console/requests``: the ledger's records, filtered and paged newest first; one record's page
shows its attempts and why each failed over. ``/console/health``: each provider's state, its
state changes and failovers per hour as this process saw them. The live streams are on
``/status``. The HTML is :mod:`.console_html`'s; here the data is gathered.

Days and hours are those of ``[server] budget_timezone`` (the budgets' calendar), when its UTC
offsets in the range are whole hours (the rollup's grain); otherwise the console counts in UTC
and says so. A day's numbers equal ``/usage`` and ``trio-balancer usage`` for that day.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import attrs

from trio_balancer.app import console_html
from trio_balancer.errors import InvalidRequest, NotFound
from trio_balancer.ledger import parse_time
from trio_balancer.ledger.queries import SERIES_GROUPS, RecordFilter

if TYPE_CHECKING:
    from trio_balancer.app.view import OperatorView

__all__ = ["PAGE_SIZE", "console_page", "local_offsets"]

PAGE_SIZE = 50
RANGES = {"30d": (30, 86400), "48h": (48, 3600)}  # buckets, bucket width
_UTC = ZoneInfo("UTC")


def local_offsets(since: float, until: float, tz: ZoneInfo) -> list[tuple[float | None, int]]:
    """``(until, utc offset)`` pairs covering ``[since, until)`` (see ``queries.series_sql``):
    one per offset in force, found hour by hour (DST changes on an hour boundary, or the
    rollup's hours could not place them anyway)."""

    def offset_at(t: float) -> int:
        delta = datetime.fromtimestamp(t, tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    pairs: list[tuple[float | None, int]] = []
    current = offset_at(since)
    t = since - since % 3600
    while t < until:
        t += 3600
        now_offset = offset_at(t)
        if now_offset != current:
            pairs.append((t, current))
            current = now_offset
    pairs.append((None, current))
    return pairs


def range_start(now: float, tz: ZoneInfo, buckets: int, width: int) -> float:
    """The start of the first of ``buckets`` local days (or hours) ending with the current one."""
    local = datetime.fromtimestamp(now, tz)
    if width == 86400:
        first = (local - timedelta(days=buckets - 1)).date()
        return datetime(first.year, first.month, first.day, tzinfo=tz).timestamp()
    return now - now % 3600 - (buckets - 1) * 3600


HTML = "text/html; charset=utf-8"


async def console_page(view: OperatorView, path: str, query: bytes) -> tuple[bytes, str]:
    """The console page at ``path``: its body and content type (``?format=json`` on the
    overview: its numbers, for scripts and for checking them against ``/usage``)."""
    q = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
    page = await _page(view, path, q)
    if isinstance(page, console_html.Overview):
        if q.get("format") == "json":
            return json.dumps(attrs.asdict(page)).encode(), "application/json"
        return console_html.overview_page(page).encode(), HTML
    return page.encode(), HTML


async def _page(view: OperatorView, path: str, q: dict[str, str]) -> str | console_html.Overview:
    if path == "/console/health":
        return _health(view)
    ledger = view.state.ledger
    if ledger is None:
        raise NotFound("the usage ledger is disabled in this balancer's config: the console reads it")
    if path == "/console":
        return await _overview(view, q)
    if path == "/console/requests":
        return await _requests(view, q)
    if path.startswith("/console/requests/"):
        record = await ledger.reader.record(path.removeprefix("/console/requests/"))
        if record is None:
            raise NotFound("no such request in the ledger")
        return console_html.record_page(record, _zone(view))
    raise NotFound(f"no console page {path}")


def _zone(view: OperatorView) -> ZoneInfo:
    return ZoneInfo(view.state.config.server.budget_timezone)


async def _overview(view: OperatorView, q: dict[str, str]) -> console_html.Overview:
    """Totals per bucket, the same split by one dimension, and the budgets."""
    ledger = view.state.ledger
    assert ledger is not None
    span = q.get("range", "30d")
    by = q.get("by", "client")
    if span not in RANGES:
        raise InvalidRequest(f"range: must be one of {', '.join(RANGES)}")
    if by not in SERIES_GROUPS:
        raise InvalidRequest(f"by: must be one of {', '.join(SERIES_GROUPS)}")
    buckets, width = RANGES[span]
    now = time.time()
    tz = _zone(view)
    since = range_start(now, tz, buckets, width)
    offsets = local_offsets(since, now, tz)
    if any(offset % 3600 for _until, offset in offsets):
        tz = _UTC  # a half-hour zone: the rollup's UTC hours cannot make its days
        since = range_start(now, tz, buckets, width)
        offsets = [(None, 0)]
    f = RecordFilter(since=since, until=now + 3600)
    totals = await ledger.reader.series(f, width_s=width, offsets=offsets)
    split = await ledger.reader.series(f, width_s=width, offsets=offsets, group=by)
    first = int((since + offsets[0][1]) // width)
    keys = view.state.config.server.client_keys
    return console_html.Overview(
        span=span,
        by=by,
        zone=tz.key,
        zone_asked=view.state.config.server.budget_timezone,
        width=width,
        buckets=list(range(first, first + buckets)),
        totals=totals,
        split=split,
        budgets=view.state.budgets.view(keys),
        since=since,
        until=now,
    )


async def _requests(view: OperatorView, q: dict[str, str]) -> str:
    ledger = view.state.ledger
    assert ledger is not None
    f = _record_filter(q)
    before = _cursor(q.get("before"))
    rows = await ledger.reader.browse(f, before=before, limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    cursor = f"{rows[-1]['started_at']!r}:{rows[-1]['id']}" if more and rows else None
    return console_html.requests_page(q, rows, cursor, _zone(view))


def _record_filter(q: dict[str, str]) -> RecordFilter:
    def text(name: str) -> str | None:
        value = q.get(name, "").strip()
        if len(value) > 200:
            raise InvalidRequest(f"{name}: longer than 200 characters")
        return value or None

    try:
        since, until = parse_time(text("since")), parse_time(text("until"))
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "since/until: not a time (2026-11-01, 2026-11-01T08:00:00 or unix seconds)"
        ) from None
    f = RecordFilter(
        since=since,
        until=until,
        client=text("client"),
        model=text("model"),
        provider=text("provider"),
        status=text("status"),
        flagged=q.get("flagged", "") in ("1", "on", "true"),
    )
    problem = f.problem()
    if problem is not None:
        raise InvalidRequest(problem)
    return f


def _cursor(text: str | None) -> tuple[float, str] | None:
    """``before=<started_at>:<id>``: the last row of the page before."""
    if not text:
        return None
    at, _, record_id = text.partition(":")
    try:
        value = float(at)
    except ValueError:
        raise InvalidRequest("before: not a page cursor") from None
    if not record_id or len(record_id) > 100 or value != value:
        raise InvalidRequest("before: not a page cursor")
    return value, record_id


def _health(view: OperatorView) -> str:
    history = view.state.health_history
    now = time.time()
    return console_html.health_page(
        providers=view.providers(),
        events=history.events(),
        failovers=history.failovers_per_hour(now),
        reasons={p["name"]: history.reasons(p["name"]) for p in view.providers()},
        now=now,
        zone=_zone(view),
    )
