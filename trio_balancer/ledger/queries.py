"""The console's SQL, written once for both backends: filters, time series, a request page.

Pure builders of ``(sql, args)``: the stores run them (:mod:`.store`), the tests and the bench
``EXPLAIN`` them. Every query is bounded by ``started_at`` (the ``requests_started_at`` index) or
led by an equality on an indexed column and ``started_at`` (``requests_client_started_at``,
``requests_provider_started_at``, ``requests_model_started_at``, migration 5).

Series read the hourly rollup ``usage_hours`` (one row per UTC hour, key, model and provider,
kept by a trigger in the same transaction as the records: migration 5), so a 30-day chart reads
a few thousand rows whatever the traffic. Their buckets are computed in the database on local
time: the hour plus the UTC offset it had, written as a ``CASE`` over the offset changes (DST)
inside the range, which the caller works out with :mod:`zoneinfo`. A bucket is the index of a
local day or hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["SERIES_GROUPS", "RecordFilter", "browse_sql", "record_sql", "series_sql"]

# What a series or a breakdown may be split by: columns with an index led by them.
SERIES_GROUPS = ("client", "model", "provider")
_TOKENS = "input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens"
_STATUS_WORDS = ("ok", "error")


@attrs.frozen
class RecordFilter:
    """Which records: a time range, equalities on key, model and provider, a status, flagged."""

    since: float | None = None
    until: float | None = None
    client: str | None = None
    model: str | None = None
    provider: str | None = None
    status: str | None = None  # "ok" (< 400), "error" (>= 400 or none), or one status code
    flagged: bool = False

    def problem(self) -> str | None:
        """Why this filter cannot be run (for a 400 naming the field), else None."""
        if (
            self.status is not None
            and self.status not in _STATUS_WORDS
            and not (self.status.isdigit() and len(self.status) == 3)
        ):
            return "status: must be ok, error or a three-digit status code"
        return None

    def where(self, mark: str) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column in SERIES_GROUPS:  # equalities first: they pick the index
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = {mark}")
                args.append(value)
        if self.since is not None:
            clauses.append(f"started_at >= {mark}")
            args.append(self.since)
        if self.until is not None:
            clauses.append(f"started_at < {mark}")
            args.append(self.until)
        if self.status == "ok":
            clauses.append("status < 400")
        elif self.status == "error":
            clauses.append("(status >= 400 OR status IS NULL)")
        elif self.status is not None:
            clauses.append(f"status = {mark}")
            args.append(int(self.status))
        if self.flagged:
            clauses.append("flagged = 1")
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def series_sql(
    f: RecordFilter,
    *,
    width_s: int,
    offsets: Sequence[tuple[float | None, int]],
    group: str | None,
    mark: str,
    floor_div: str,
) -> tuple[str, list[Any]]:
    """Totals per local time bucket of ``width_s`` seconds (and per ``group``, if given), read
    from the hourly rollup (``usage_hours``, kept by a trigger as records are written).

    ``f``'s time range is taken to whole UTC hours (callers align it: hours of a zone with a
    whole-hour offset are UTC hours); its status and flagged parts do not apply here.
    ``offsets``: ``(until, utc offset in s)`` pairs in time order, the last one's ``until``
    None: an hour's offset is the first pair's whose ``until`` is after it.
    ``floor_div``: the backend's integer division, a format with ``{x}`` and ``{w}``.
    """
    if group is not None and group not in SERIES_GROUPS:
        raise ValueError(f"cannot split by {group!r}; choose from {', '.join(SERIES_GROUPS)}")
    clauses: list[str] = []
    args: list[Any] = []
    if f.since is not None:
        clauses.append(f"hour >= {mark}")
        args.append(int(f.since // 3600))
    if f.until is not None:
        clauses.append(f"hour < {mark}")
        args.append(int(-(-f.until // 3600)))
    for column in SERIES_GROUPS:
        value = getattr(f, column)
        if value is not None:
            clauses.append(f"{column} = {mark}")
            args.append(value)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    offset_args: list[Any] = []
    if len(offsets) == 1:
        offset = f"{int(offsets[0][1])}"
    else:
        cases = []
        for until, seconds in offsets[:-1]:
            cases.append(f"WHEN hour * 3600 < {mark} THEN {int(seconds)}")
            offset_args.append(until)
        offset = f"CASE {' '.join(cases)} ELSE {int(offsets[-1][1])} END"
    bucket = floor_div.format(x=f"hour * 3600 + {offset}", w=int(width_s))
    split = f", {group}" if group else ""
    sql = (
        f"SELECT {bucket} AS bucket{split}, sum(requests) AS requests, sum(cost_usd) AS cost_usd,"
        f" sum({_TOKENS}) AS tokens, sum(errors) AS errors, sum(flagged) AS flagged"
        f" FROM usage_hours {where} GROUP BY 1{', 2' if group else ''}"
    )
    return sql, [*offset_args, *args]


def browse_sql(
    f: RecordFilter, *, columns: Sequence[str], before: tuple[float, str] | None, limit: int, mark: str
) -> tuple[str, list[Any]]:
    """One page of records, newest first, after ``before`` (the last row of the page before:
    keyset paging, so page 500 costs what page 1 does)."""
    where, args = f.where(mark)
    if before is not None:
        keyset = f"(started_at < {mark} OR (started_at = {mark} AND id < {mark}))"
        where = f"{where} AND {keyset}" if where else f"WHERE {keyset}"
        args += [before[0], before[0], before[1]]
    sql = (
        f"SELECT {', '.join(columns)}, flagged FROM requests {where}"
        f" ORDER BY started_at DESC, id DESC LIMIT {mark}"
    )
    return sql, [*args, limit]


def record_sql(*, columns: Sequence[str], mark: str) -> str:
    return f"SELECT {', '.join(columns)}, flagged FROM requests WHERE id = {mark}"
