"""Operator endpoints, on one router so one guard can protect them all.

``GET /providers``: each provider's health, last error, cooldown and counters.
``POST /providers/{name}/reset``: end a cooldown now.
``POST /admin/reload``: re-read the config file (the same as SIGHUP).
``GET /usage?since=&until=&group_by=provider,model,client``: token and cost totals.
``GET /metrics``: Prometheus. ``GET /status``: a live HTML page; ``GET /status.json``: its data.
``GET /usage/requests?since=&until=&flagged=1&limit=&offset=``: the records, paged.
``GET /console``, ``/console/requests[/{id}]``, ``/console/health``: the operator console
(:mod:`.console`), HTML; ``/console?format=json``: the overview's numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from trio_balancer.app.console import console_page
from trio_balancer.app.metrics import CONTENT_TYPE
from trio_balancer.app.respond import Send, require_method, send_body, send_json
from trio_balancer.app.status import render_html, status_data
from trio_balancer.config import ConfigError
from trio_balancer.errors import InvalidRequest, NotFound
from trio_balancer.ledger import GROUP_COLUMNS, parse_time

if TYPE_CHECKING:
    from trio_balancer.app.view import OperatorView

__all__ = ["dispatch", "handles", "usage_view"]


ENDPOINTS = ("/providers", "/usage", "/usage/requests", "/metrics", "/status", "/status.json")


# The console's pages run no script and load nothing from elsewhere: say so to the browser, so
# that text from the ledger that slipped past escaping still could not run or call out.
CONSOLE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


def handles(path: str) -> bool:
    return path in ENDPOINTS or path == "/console" or path.startswith(("/providers/", "/admin/", "/console/"))


async def dispatch(view: OperatorView, method: str, path: str, query: bytes, send: Send) -> None:
    cluster = view.state.cluster
    if path == "/metrics":
        require_method(method, "GET")
        await send_body(send, 200, view.state.metrics.render(), CONTENT_TYPE)
    elif path == "/status.json":
        require_method(method, "GET")
        await send_json(send, 200, status_data(view))
    elif path == "/status":
        require_method(method, "GET")
        await send_body(send, 200, render_html(status_data(view)).encode(), "text/html; charset=utf-8")
    elif path in ("/usage", "/usage/requests"):
        require_method(method, "GET")
        await send_json(send, 200, await usage_view(view, path, query))
    elif path == "/console" or path.startswith("/console/"):
        require_method(method, "GET")
        body, content_type = await console_page(view, path, query)
        await send_body(send, 200, body, content_type, CONSOLE_HEADERS)
    elif path == "/providers":
        require_method(method, "GET")
        page = {"providers": view.providers(), "cluster": None if cluster is None else cluster.view()}
        await send_json(send, 200, page)
    elif path.startswith("/providers/") and path.endswith("/reset"):
        require_method(method, "POST")
        name = path.removeprefix("/providers/").removesuffix("/reset")
        if not view.reset_provider(name):
            raise NotFound(f"no provider named {name!r}")
        await send_json(send, 200, {"reset": name})
    elif path == "/admin/reload":
        require_method(method, "POST")
        try:
            result = await view.reload()
        except ConfigError as exc:
            raise InvalidRequest(f"config not reloaded: {exc}") from None
        await send_json(send, 200, result)
    else:
        raise NotFound(f"no endpoint {method} {path}")


# What /usage/requests pages at most, and how far it may skip: offsets past any real ledger
# are refused rather than handed to the database as numbers it cannot take.
MAX_PAGE = 1000
MAX_OFFSET = 10**9
# Times the ledger can hold: 1970 to the year 9999, in unix seconds.
_MAX_TIME = 253402300799.0


async def usage_view(view: OperatorView, path: str, query: bytes) -> dict[str, Any]:
    ledger = view.state.ledger
    if ledger is None:
        raise NotFound("the usage ledger is disabled in this balancer's config")
    q = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
    since, until = _time_param(q, "since"), _time_param(q, "until")
    if path == "/usage":
        groups = [g for g in q.get("group_by", "").split(",") if g]
        for g in groups:
            if g not in GROUP_COLUMNS:
                raise InvalidRequest(
                    f"group_by: cannot group by {g!r}; choose from {', '.join(GROUP_COLUMNS)}"
                )
        rows = await ledger.reader.summary(since, until, groups)
        keeper = view.state.budgets
        budgets = keeper.view(view.state.config.server.client_keys)
        return {"since": since, "until": until, "group_by": groups, "totals": rows, "budgets": budgets,
                "budget_sync": keeper.status()}  # fmt: skip
    limit = _int_param(q, "limit", 100, 1, MAX_PAGE)
    offset = _int_param(q, "offset", 0, 0, MAX_OFFSET)
    flagged = _bool_param(q, "flagged")
    records = await ledger.reader.records(since, until, flagged=flagged, limit=limit, offset=offset)
    page: dict[str, Any] = {"records": records, "limit": limit, "offset": offset}
    if len(records) == limit:
        page["next_offset"] = offset + limit
    return page


def _time_param(q: dict[str, str], name: str) -> float | None:
    try:
        value = parse_time(q.get(name))
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{name}: not a time (use 2026-11-01, 2026-11-01T08:00:00, or unix seconds)"
        ) from None
    if value is not None and not (math.isfinite(value) and 0 <= value <= _MAX_TIME):
        raise InvalidRequest(f"{name}: out of range (unix seconds between 0 and {_MAX_TIME:.0f})")
    return value


def _int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = q.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 12:
        raise InvalidRequest(f"{name}: must be a whole number between {lo} and {hi}")
    value = int(text)
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name}: must be between {lo} and {hi}, not {value}")
    return value


def _bool_param(q: dict[str, str], name: str) -> bool:
    text = q.get(name, "").lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"{name}: must be 1/true/yes or 0/false/no")
