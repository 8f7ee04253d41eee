"""The running balancer's read path into its ledger, for /usage and /usage/requests.

One connection to the primary store, of its own, opened at the first query and kept: a query
neither waits behind the writer's batches nor holds them up, and it costs no connection set-up
and no migration (on PostgreSQL a migration locks the schema table, so a query that migrated
would queue behind, or hold up, every instance starting). The connection is used from one
worker thread at a time, under a lock, as SQLite requires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import trio

from trio_balancer.ledger.queries import RecordFilter
from trio_balancer.ledger.store import LedgerStore, open_store

__all__ = ["LedgerReader"]

T = TypeVar("T")


class LedgerReader:
    """Queries on one kept connection to the store at ``url``.

    It opens the store for reading: the writer migrated it when it opened it. Only while
    ``schema_ready()`` is false (the writer has not reached a database server since the start)
    does it open the store for writing, so that a query finds the tables, as the writer will.

    A query that finds the connection broken (the database server restarted) is run once more
    on a new one. After :meth:`aclose` (shutdown), each query has a connection of its own.
    """

    def __init__(self, url: str, *, schema_ready: Callable[[], bool]) -> None:
        self.url = url
        self._schema_ready = schema_ready
        self._store: LedgerStore | None = None
        self._lock = trio.Lock()  # one thread at a time on the connection
        self._closed = False

    async def summary(
        self, since: float | None, until: float | None, group_by: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Totals, grouped by ``group_by`` (see :meth:`LedgerStore.summary`)."""
        groups = list(group_by)
        return await self._query(lambda store: store.summary(since, until, groups))

    async def records(
        self, since: float | None, until: float | None, *, flagged: bool, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """One page of records, oldest first (see :meth:`LedgerStore.records`)."""
        return await self._query(
            lambda store: store.records(since, until, flagged=flagged, limit=limit, offset=offset)
        )

    async def spend_by_client(
        self, month_start: float, day_start: float, *, excluding: Sequence[str] = ()
    ) -> list[tuple[str, float, int, float, int]]:
        """Every other process's spend per client (see :meth:`LedgerStore.spend_by_client`)."""
        return await self._query(
            lambda store: store.spend_by_client(month_start, day_start, excluding=excluding)
        )

    async def series(
        self,
        f: RecordFilter,
        *,
        width_s: int,
        offsets: Sequence[tuple[float | None, int]],
        group: str | None = None,
    ) -> list[dict[str, Any]]:
        """Totals per local day or hour (see :meth:`LedgerStore.series`)."""
        return await self._query(lambda store: store.series(f, width_s=width_s, offsets=offsets, group=group))

    async def browse(
        self, f: RecordFilter, *, before: tuple[float, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """One page of records, newest first (see :meth:`LedgerStore.browse`)."""
        return await self._query(lambda store: store.browse(f, before=before, limit=limit))

    async def record(self, record_id: str) -> dict[str, Any] | None:
        return await self._query(lambda store: store.record(record_id))

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            store, self._store = self._store, None
            if store is not None:
                await trio.to_thread.run_sync(store.close)

    async def _query(self, fn: Callable[[LedgerStore], T]) -> T:
        async with self._lock:
            migrate = not self._schema_ready()
            if self._closed:
                return await trio.to_thread.run_sync(self._on_own_connection, fn, migrate)
            kept = self._store is not None
            try:
                return await trio.to_thread.run_sync(self._on_kept_connection, fn, migrate)
            except Exception:
                if not kept or self._store is not None:
                    raise
            # The kept connection broke (and was dropped): once more, on a new one.
            return await trio.to_thread.run_sync(self._on_kept_connection, fn, migrate)

    def _on_kept_connection(self, fn: Callable[[LedgerStore], T], migrate: bool) -> T:
        """In a worker thread, under the lock: ``fn`` on the kept store, opened if need be."""
        if self._store is None:
            self._store = open_store(self.url, migrate=migrate)
        store = self._store
        try:
            return fn(store)
        except Exception:
            if store.broken:
                self._store = None
                with suppress(Exception):
                    store.close()
            raise

    def _on_own_connection(self, fn: Callable[[LedgerStore], T], migrate: bool) -> T:
        store = open_store(self.url, migrate=migrate)
        try:
            return fn(store)
        finally:
            store.close()
