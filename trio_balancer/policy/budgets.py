"""Spend budgets per client key: calendar periods, the spend book, the admit check. Pure.

A key may have ``budget_usd = { day, month }`` and ``tokens = { day, month }`` (input + output +
cache tokens). Periods are calendar days and months in one time zone (``[server]
budget_timezone``), so "today" ends at the operator's midnight, DST included.

What a key spent in a period is the sum over its requests that *started* in it (the ledger's
``started_at``, so the numbers equal ``trio-balancer usage`` for the same period), of their
recorded cost and tokens, estimated ones included (a request whose usage was estimated spent
what the estimate says; its record is flagged). A request with no known price adds its tokens
and no dollars.

The book holds two parts per client and period:

- *others*: what the ledger says every other balancer process spent (other instances and
  workers, and this one's earlier runs), replaced wholesale at each sync;
- *own*: what this process's finished requests spent, added as each is recorded.

Own records are written to the ledger too, tagged with this process's instance id, and the sync
reads the ledger without them, so nothing is counted twice and nothing waits for the ledger
to be counted here.

A request is admitted while every budget of its key has something left: ``spent < limit``.
Its own cost counts when it ends; a request in flight is never cut for it. So a key can go over
by at most what the requests admitted before the one that crossed the line spend (its
concurrency, if it has ``max_concurrent``), plus, across instances, what other processes spent
since the last sync (``budget_sync_s``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from trio_balancer.config import ClientKey

__all__ = [
    "ALERT_THRESHOLDS",
    "BudgetExceeded",
    "BudgetLine",
    "Periods",
    "Spend",
    "SpendBook",
    "ThresholdWatch",
    "budget_lines",
    "periods_at",
]


@attrs.frozen
class Periods:
    """The day and month that contain one instant, with their bounds (unix seconds)."""

    day: str  # "2026-12-03"
    month: str  # "2026-12"
    day_start: float
    day_end: float
    month_start: float
    month_end: float

    def bounds(self, period: str) -> tuple[str, float, float]:
        """``(key, start, end)`` of ``"day"`` or ``"month"``."""
        if period == "day":
            return self.day, self.day_start, self.day_end
        return self.month, self.month_start, self.month_end


def periods_at(now: float, tz: ZoneInfo) -> Periods:
    """The calendar day and month of ``now`` in ``tz``; their ends are the next ones' starts."""
    local = datetime.fromtimestamp(now, tz)
    day = local.date()
    next_day = day + timedelta(days=1)
    first = day.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)

    def start(d: Any) -> float:
        return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()

    return Periods(
        day=day.isoformat(),
        month=day.isoformat()[:7],
        day_start=start(day),
        day_end=start(next_day),
        month_start=start(first),
        month_end=start(next_month),
    )


@attrs.frozen
class Spend:
    usd: float = 0.0
    tokens: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.usd + other.usd, self.tokens + other.tokens)

    @classmethod
    def of(cls, usd: float | None, tokens: int) -> Spend:
        """A request's spend as recorded; a cost that is not a finite, non-negative number
        (none can be since prices are checked; kept as the book's own guard) adds nothing."""
        dollars = usd if usd is not None and math.isfinite(usd) and usd > 0 else 0.0
        return cls(dollars, max(0, tokens))


@attrs.frozen
class BudgetLine:
    """One budget of a key in the current period: what it allows, what is spent, when it resets."""

    what: str  # "usd" | "tokens"
    period: str  # "day" | "month"
    limit: float
    spent: float
    resets_at: float  # unix seconds: the period's end

    @property
    def left(self) -> float:
        return max(0.0, self.limit - self.spent)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit

    def describe(self) -> str:
        """``daily budget of $20.00`` / ``monthly token budget of 5,000,000``."""
        adjective = "daily" if self.period == "day" else "monthly"
        if self.what == "usd":
            return f"{adjective} budget of ${self.limit:,.2f}"
        return f"{adjective} token budget of {int(self.limit):,}"

    def amount(self, value: float) -> str:
        return f"${value:,.4f}" if self.what == "usd" else f"{int(value):,} tokens"


class BudgetExceeded(Exception):
    """A key's budget is spent; ``line`` says which, ``retry_after`` is seconds to its reset."""

    def __init__(self, client: str, line: BudgetLine, now: float, tz: ZoneInfo) -> None:
        resets = datetime.fromtimestamp(line.resets_at, tz).isoformat()
        super().__init__(
            f"client {client!r} has spent its {line.describe()}: {line.amount(line.spent)} spent;"
            f" it resets at {resets}"
        )
        self.client = client
        self.line = line
        self.retry_after = max(1, math.ceil(line.resets_at - now))


def budget_lines(key: ClientKey, spent: Mapping[str, Spend], periods: Periods) -> list[BudgetLine]:
    """Every budget ``key`` has, against ``spent`` (by ``"day"`` / ``"month"``)."""
    lines = []
    for period in ("day", "month"):
        _key, _start, end = periods.bounds(period)
        used = spent.get(period, Spend())
        usd, tokens = getattr(key.budget_usd, period), getattr(key.tokens, period)
        if usd is not None:
            lines.append(BudgetLine("usd", period, float(usd), used.usd, end))
        if tokens is not None:
            lines.append(BudgetLine("tokens", period, float(tokens), float(used.tokens), end))
    return lines


class SpendBook:
    """Spend per client and calendar period: the ledger's word on others, and our own.

    Keys of the maps are ``(client, period key)``, the period key being a day (``2026-12-03``)
    or a month (``2026-12``) in the book's time zone. Entries of past periods are dropped when
    a new one begins; the book holds at most a day and a month per client.
    """

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._others: dict[tuple[str, str], Spend] = {}
        self._own: dict[tuple[str, str], Spend] = {}
        self._current: tuple[str, str] | None = None  # (day, month) the maps are for

    def periods(self, now: float) -> Periods:
        periods = periods_at(now, self.tz)
        if self._current != (periods.day, periods.month):
            self._current = (periods.day, periods.month)
            keep = {periods.day, periods.month}
            self._own = {k: v for k, v in self._own.items() if k[1] in keep}
            self._others = {k: v for k, v in self._others.items() if k[1] in keep}
        return periods

    def add_own(self, client: str, started_at: float, spend: Spend, now: float) -> None:
        """A request of this process ended: its spend counts in the periods it started in."""
        current = self.periods(now)
        started = periods_at(started_at, self.tz)
        for key in (started.day, started.month):
            if key in (current.day, current.month):
                self._own[(client, key)] = self._own.get((client, key), Spend()) + spend

    def replace_others(self, rows: Iterable[tuple[str, str, Spend]], now: float) -> None:
        """What the ledger says other processes spent: ``(client, period key, spend)`` rows."""
        self.periods(now)
        self._others = {(client, key): spend for client, key, spend in rows}

    def spent(self, client: str, now: float) -> dict[str, Spend]:
        """``{"day": Spend, "month": Spend}`` for ``client`` at ``now``."""
        periods = self.periods(now)
        out = {}
        for period, key in (("day", periods.day), ("month", periods.month)):
            k = (client, key)
            out[period] = self._others.get(k, Spend()) + self._own.get(k, Spend())
        return out

    def check(self, key: ClientKey, now: float) -> None:
        """Raise :class:`BudgetExceeded` when a budget of ``key`` has nothing left; it names the
        spent budget that resets last (the month's, if the day's and the month's are both
        spent), so ``retry-after`` is when the key is really open again."""
        if not key.has_budget:
            return
        periods = self.periods(now)
        spent = [line for line in budget_lines(key, self.spent(key.name, now), periods) if line.exhausted]
        if spent:
            raise BudgetExceeded(key.name, max(spent, key=lambda line: line.resets_at), now, self.tz)


# The shares of a budget an operator is told about (``[alerts] webhook_url``).
ALERT_THRESHOLDS = (0.8, 1.0)


class ThresholdWatch:
    """Which budget thresholds each key has passed in the current periods, so each is told once.

    ``crossed`` returns the (line, threshold) pairs newly passed; a new period starts afresh.
    """

    def __init__(self, thresholds: tuple[float, ...] = ALERT_THRESHOLDS) -> None:
        self.thresholds = thresholds
        self._told: set[tuple[str, str, str, float]] = set()  # (client, what, period key, threshold)

    def crossed(
        self, client: str, lines: Iterable[BudgetLine], periods: Periods
    ) -> list[tuple[BudgetLine, float]]:
        current = {periods.day, periods.month}
        self._told = {t for t in self._told if t[2] in current}
        out = []
        for line in lines:
            key = periods.bounds(line.period)[0]
            for threshold in self.thresholds:
                told = (client, line.what, key, threshold)
                if line.spent >= threshold * line.limit and told not in self._told:
                    self._told.add(told)
                    out.append((line, threshold))
        return out
