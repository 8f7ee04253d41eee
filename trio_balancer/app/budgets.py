"""Budgets at run time: the spend book checked before each request, fed as each is recorded,
and read back from the ledger for everything this process did not see itself.

The rules (periods, what counts, the overshoot bound) are in :mod:`trio_balancer.policy.budgets`.
Here: one task syncs the book from the ledger when the app starts (so budgets survive restarts:
the earlier runs are "other processes") and every ``[server] budget_sync_s`` after, while any key
has a budget (so instances and workers sharing a ledger enforce one budget). A sync that fails
(the database is away) keeps the last numbers and says so on the view; requests keep flowing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import trio

from trio_balancer.config import ClientKey
from trio_balancer.errors import RateLimited
from trio_balancer.ledger import Record
from trio_balancer.ledger.reader import LedgerReader
from trio_balancer.ledger.store import STORE_ERRORS
from trio_balancer.logging import get_logger
from trio_balancer.policy.budgets import BudgetExceeded, Spend, SpendBook, ThresholdWatch, budget_lines

__all__ = ["BudgetKeeper"]

log = get_logger("trio_balancer.app.budgets")


class BudgetKeeper:
    """This process's spend book, its admit check and its sync from the ledger.

    ``clock`` is wall-clock unix seconds (calendar periods are wall-clock things); tests pass
    their own to cross a midnight.
    """

    def __init__(self, timezone: str, instance: str, *, clock: Callable[[], float] = time.time) -> None:
        self._name = instance
        self._generation = 0  # a new calendar starts a new generation of this process's id
        self.clock = clock
        self.book = SpendBook(ZoneInfo(timezone))
        self.synced_at: float | None = None  # wall clock of the last good sync
        self.sync_error: str | None = None
        self.recorded_count = 0  # records handed to the keeper (and, after it, to the ledger)
        # A time zone asked for by a reload, not yet in force: its book (own spend since the
        # change) and how many records must be in the ledger before its sync can be trusted.
        self._next: tuple[SpendBook, int] | None = None
        self.settled: Callable[[int], Awaitable[bool]] | None = None  # the ledger has written n
        self._resync = trio.Event()  # set to sync now (a reload changed the time zone)
        self._watch = ThresholdWatch()

    @property
    def instance(self) -> str:
        """This process's id on the records it writes now."""
        return self._name if not self._generation else f"{self._name}.{self._generation}"

    def _ids(self) -> list[str]:
        """Every id this process wrote records under (its own book counts them all)."""
        return [self._name, *(f"{self._name}.{g}" for g in range(1, self._generation + 1))]

    def admit(self, key: ClientKey | None) -> None:
        """Raise :class:`RateLimited` (429, ``retry-after`` to the reset) when a budget of ``key``
        has nothing left."""
        if key is None or not key.has_budget:
            return
        try:
            self.book.check(key, self.clock())
        except BudgetExceeded as exc:
            raise RateLimited(str(exc), headers={"retry-after": str(exc.retry_after)}) from None

    def recorded(self, record: Record, key: ClientKey | None = None) -> list[dict[str, Any]]:
        """A request of this process was recorded: what it spent counts from now. Returns the
        alerts it caused (``key``'s budgets newly 80 % or 100 % spent), for the webhook."""
        self.recorded_count += 1  # every record: the ledger counts them all (written)
        spend = Spend.of(record.cost_usd, record.tokens)
        if not (spend.usd or spend.tokens):
            return []
        now = self.clock()
        self.book.add_own(record.client, record.started_at, spend, now)
        if self._next is not None:
            self._next[0].add_own(record.client, record.started_at, spend, now)
        if key is None or not key.has_budget:
            return []
        periods = self.book.periods(now)
        lines = budget_lines(key, self.book.spent(key.name, now), periods)
        return [
            {
                "event": "budget_threshold",
                "client": key.name,
                "budget": f"{line.what}/{line.period}",
                "threshold": threshold,
                "limit": line.limit,
                "spent": round(line.spent, 6),
                "resets_at": datetime.fromtimestamp(line.resets_at, self.book.tz).isoformat(),
            }
            for line, threshold in self._watch.crossed(key.name, lines, periods)
        ]

    def set_timezone(self, timezone: str) -> None:
        """A reload named another calendar. Its book starts now: this process's records from
        here on carry a new id and count in both books; the earlier ones are read back from
        the ledger, as another process's, once the ledger has them all. Until then (the
        database away, records spilled) the old book stays in force, so nothing is forgotten."""
        wanted = self._next[0].tz.key if self._next is not None else self.book.tz.key
        if timezone == wanted:
            return
        if timezone == self.book.tz.key:
            self._next = None  # back to the calendar in force before the switch happened
            return
        self._generation += 1
        self._next = (SpendBook(ZoneInfo(timezone)), self.recorded_count)
        self._resync.set()

    async def sync(self, reader: LedgerReader) -> None:
        """Read every other process's spend in the current periods from the ledger; and switch
        to a new time zone's book once its reading can be trusted."""
        if self._next is not None:
            book, before = self._next
            # Once the ledger has this process's earlier records, they are read with the others'.
            settled = self.settled is not None and await self.settled(before)
            if settled and await self._read_into(book, reader, [self.instance]):
                if self._next is not None and self._next[0] is book:  # no reload meanwhile
                    self.book, self._next = book, None
                return
        await self._read_into(self.book, reader, self._ids())

    async def _read_into(self, book: SpendBook, reader: LedgerReader, excluding: list[str]) -> bool:
        now = self.clock()
        periods = book.periods(now)
        try:
            rows = await reader.spend_by_client(periods.month_start, periods.day_start, excluding=excluding)
        except STORE_ERRORS as exc:  # the database is away: the last numbers stand
            if self.sync_error is None:
                log.warning("budgets.sync_failed", error=f"{type(exc).__name__}: {exc}")
            self.sync_error = f"{type(exc).__name__}: {exc}"
            return False
        book.replace_others(
            [
                row
                for client, month_usd, month_tokens, day_usd, day_tokens in rows
                for row in (
                    (client, periods.month, Spend(month_usd, month_tokens)),
                    (client, periods.day, Spend(day_usd, day_tokens)),
                )
            ],
            now,
        )
        if self.sync_error is not None:
            log.info("budgets.synced")
        self.synced_at, self.sync_error = now, None
        return True

    async def run(
        self,
        reader: LedgerReader,
        interval: Callable[[], float],
        wanted: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sync before the app serves, then every ``interval()`` s, while ``wanted()`` (some key
        has a budget; a balancer without budgets never reads the ledger for them)."""
        if wanted():
            await self.sync(reader)
        task_status.started()
        while True:
            with trio.move_on_after(interval()):
                await self._resync.wait()
            self._resync = trio.Event()
            if wanted():
                await self.sync(reader)

    def status(self) -> dict[str, Any]:
        """How fresh the others' numbers are: the last good sync, and why the last one failed."""
        return {
            "timezone": self.book.tz.key,
            "switching_to": None if self._next is None else self._next[0].tz.key,
            "synced_at": self.synced_at,
            "sync_error": self.sync_error,
        }

    def view(self, keys: Sequence[ClientKey]) -> list[dict[str, Any]]:
        """Each key with a budget: its budgets, spent and left, and when each resets."""
        now = self.clock()
        periods = self.book.periods(now)
        out = []
        for key in keys:
            if not key.has_budget:
                continue
            lines = budget_lines(key, self.book.spent(key.name, now), periods)
            out.append(
                {
                    "client": key.name,
                    "budgets": [
                        {
                            "what": line.what,
                            "period": line.period,
                            "limit": line.limit,
                            "spent": round(line.spent, 6),
                            "left": round(line.left, 6),
                            "exhausted": line.exhausted,
                            "resets_at": line.resets_at,
                        }
                        for line in lines
                    ],
                }
            )
        return out
