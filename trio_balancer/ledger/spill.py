"""Where the writer's batches go: the primary store, else the spill file, and back again.

With a database server as the primary store (PostgreSQL), a batch it cannot take goes to a
local SQLite spill file instead of waiting; :meth:`SpillingStore.drain_spill` moves spilled
records to the primary once it answers again. Every store call runs in a worker thread, one
at a time. The sink also keeps the counts the writer reports: written, failed, lost.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import attrs
import trio

from trio_balancer.ledger.backlog import Backlog
from trio_balancer.ledger.record import Record
from trio_balancer.ledger.store import LedgerStore, SqliteStore, open_store
from trio_balancer.logging import get_logger

__all__ = ["DRAIN_INTERVAL_S", "REFUSALS_TO_GIVE_UP", "SpillingStore", "short_error"]

log = get_logger("trio_balancer.ledger.spill")
T = TypeVar("T")

# Rounds in which the store took other records but refused this one, before it is given up.
REFUSALS_TO_GIVE_UP = 3
# How often the spill file is checked for records to move back to the primary database.
DRAIN_INTERVAL_S = 1.0
# Records moved from the spill file to the primary in one transaction.
_DRAIN_BATCH = 500


def short_error(exc: BaseException) -> str:
    """An exception in one line for the logs and /status: its class and the first 200 characters."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


class SpillingStore:
    """The primary store and the spill file behind it, and what was written, failed or lost.

    ``held`` is the writer's backlog: while it holds records, their failures were logged when
    they were first held, and are not logged again at every retry.
    """

    def __init__(self, url: str, path: str, spill_path: str | None, held: Backlog) -> None:
        self.url = url
        self.path = path
        self.spill_path = spill_path
        self.store: LedgerStore | None = None
        self.spill: SqliteStore | None = None
        self.spilled = 0  # records currently in the spill file
        self.written = 0  # records written to the primary store or the spill file
        self.failed_writes = 0
        self.lost = 0  # records given up (logged whole): the backlog overflowed, or shutdown
        self.open_error = ""
        # The primary was opened, and so migrated, at least once: readers need not migrate it.
        self.primary_migrated = False
        self._held = held
        self._lock = trio.Lock()  # one thread at a time on the stores' connections
        self._refusals: dict[str, int] = {}  # record id -> rounds refused while others went in
        self._wrote = trio.Event()

    @property
    def degraded(self) -> bool:
        """Records cannot reach the primary store: it is not open, or some wait in the spill file."""
        return self.store is None or self.spilled > 0

    async def open_primary(self) -> bool:
        try:
            self.store = await trio.to_thread.run_sync(open_store, self.url)
        except Exception as exc:  # any driver error: the database is not there yet
            self.store = None
            self.open_error = short_error(exc)
            log.error("ledger.unavailable", url=self.path, error=self.open_error)
            return False
        self.primary_migrated = True
        log.info("ledger.open", url=self.path, schema=self.store.version)
        return True

    async def open_spill(self) -> None:
        """Open the spill file and count what an earlier run left in it."""
        assert self.spill_path is not None
        self.spill = await trio.to_thread.run_sync(SqliteStore, self.spill_path)
        self.spilled = await trio.to_thread.run_sync(self.spill.count)

    async def wait_written(self, count: int) -> None:
        """Return once ``count`` records in all have been written (tests, status)."""
        while self.written < count:
            await self._wrote.wait()

    def count_written(self, n: int) -> None:
        self.written += n
        wrote, self._wrote = self._wrote, trio.Event()
        wrote.set()

    def lose(self, record: Record, why: str) -> None:
        self.lost += 1
        log.error("ledger.record_lost", why=why, record=attrs.asdict(record))

    async def store_batch(self, batch: list[Record]) -> list[Record]:
        """Into the primary, else the spill file; returns the records not stored, to hold.

        A batch the store refuses is tried record by record: if the first three are refused
        too, the store is down and the whole batch waits. A record refused while the store
        takes others counts a refusal; after ``REFUSALS_TO_GIVE_UP`` such rounds it is one the
        store will never take and is given up (logged whole), so it cannot hold every later
        record back. (One round is not enough: the store may just have come back.)
        """
        if await self._store_whole(batch):
            return []
        if len(batch) == 1:
            # Alone, a refusal says nothing about the record, unless the store already took
            # others while refusing this one: then it is another round against it.
            return self._refused_again(batch) if batch[0].id in self._refusals else batch
        refused: list[Record] = []
        for i, record in enumerate(batch):
            if await self._store_whole([record]):
                continue
            refused.append(record)
            if len(refused) == i + 1 and i >= 2:
                return [*refused, *batch[i + 1 :]]  # the first three all refused: the store is down
        if len(refused) == len(batch):
            return batch
        return self._refused_again(refused)

    def _refused_again(self, refused: list[Record]) -> list[Record]:
        """Count a round against each record; give up those at the limit, keep the others."""
        kept = []
        for record in refused:
            rounds = self._refusals.get(record.id, 0) + 1
            if rounds >= REFUSALS_TO_GIVE_UP:
                self._refusals.pop(record.id, None)
                self.lose(record, "the store refuses this record")
            else:
                self._refusals[record.id] = rounds
                kept.append(record)
        return kept

    async def _store_whole(self, batch: list[Record]) -> bool:
        store = self.store
        if store is not None:
            try:
                await self.on_store(store.write, batch)
                self.count_written(len(batch))
                return True
            except Exception as exc:
                self.failed_writes += 1
                if self.spill is not None:
                    # A database server: reconnect from scratch later (the drain loop).
                    self.store = None
                    with suppress(Exception):
                        await self.on_store(store.close)
                if not self._held:
                    log.error(
                        "ledger.write_failed", url=self.path, error=short_error(exc), records=len(batch)
                    )
        if self.spill is not None:
            try:
                await self.on_store(self.spill.write, batch)
            except Exception as exc:
                self.failed_writes += 1
                log.error("ledger.spill_failed", spill=self.spill_path, error=short_error(exc))
                return False
            if not self.spilled:
                log.error("ledger.spilling", url=self.path, spill=self.spill_path)
            self.spilled += len(batch)
            self.count_written(len(batch))
            return True
        return False

    async def drain_spill(self) -> None:
        """Move spilled records to the primary store once it answers again (runs until cancelled)."""
        assert self.spill is not None
        while True:
            await trio.sleep(DRAIN_INTERVAL_S)
            if not self.spilled:
                continue
            if self.store is None and not await self.open_primary():
                continue
            while self.spilled and self.store is not None:
                try:
                    records = await self.on_store(self.spill.take, _DRAIN_BATCH)
                except Exception as exc:  # the spill file itself failing: try again next round
                    log.error("ledger.spill_read_failed", error=short_error(exc))
                    break
                if not records:
                    self.spilled = 0
                    break
                with trio.CancelScope(shield=True):
                    moved = await self._drain_batch(records)
                if not moved:
                    self.store = None  # down again: reconnect from scratch at the next round
                    break
                self.spilled = max(0, self.spilled - len(records))
                if not self.spilled:
                    log.info("ledger.drained", url=self.path)

    async def _drain_batch(self, records: list[Record]) -> bool:
        """Move one batch from the spill file to the primary; False when the primary is down.

        As in :meth:`store_batch`, a batch the primary refuses is tried record by record:
        records it refuses while taking others are given up (logged whole) rather than block
        the spill.
        """
        store, spill = self.store, self.spill
        assert store is not None and spill is not None
        try:
            await self.on_store(store.write, records)
        except Exception as exc:
            log.error("ledger.drain_failed", error=short_error(exc), records=len(records))
            moved, refused = [], []
            for record in records:
                try:
                    await self.on_store(store.write, [record])
                    moved.append(record)
                except Exception:
                    refused.append(record)
            if not moved:
                return False
            for record in refused:
                self.lose(record, "the primary store refuses this spilled record")
        try:
            await self.on_store(spill.delete, [r.id for r in records])
        except Exception as exc:  # moved but not deleted: the next round moves them again, once
            log.error("ledger.spill_delete_failed", error=short_error(exc), records=len(records))
            return False
        return True

    async def on_store(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a worker thread, one at a time: a SQLite connection used from two
        threads at once (a late record's write while shutdown closes it) crashes the process."""
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def close(self) -> None:
        for name in ("store", "spill"):
            store = getattr(self, name)
            if store is not None:
                setattr(self, name, None)
                await self.on_store(store.close)
