"""The usage ledger's writer: one record per request, written by one task.

Request handlers hand records to :meth:`Ledger.record`, which puts them on a bounded memory
channel without waiting in the normal case; a single writer task drains the channel and writes
whatever has accumulated in one transaction, in a worker thread, so nothing on the streaming
path waits for the disk. The writer gathers records for at most 100 ms after the first one, then writes them in
one transaction, so a crash loses at most the last fraction of a second. On
graceful shutdown the channel is closed after the last flight ended and the writer drains it.

Where a batch goes (the primary store, else a spill file) is :mod:`trio_balancer.ledger.spill`;
what no store takes waits in a :class:`~trio_balancer.ledger.backlog.Backlog`. Queries go
through :attr:`Ledger.reader`, on a connection of their own.
"""

from __future__ import annotations

import os

import trio

from trio_balancer.ledger.backlog import RETRY_FIRST_S, Backlog
from trio_balancer.ledger.reader import LedgerReader
from trio_balancer.ledger.record import Record
from trio_balancer.ledger.spill import SpillingStore, short_error
from trio_balancer.ledger.store import open_store, sqlite_path
from trio_balancer.logging import get_logger
from trio_balancer.redaction import redact_url

__all__ = ["BATCH_MAX", "BATCH_WINDOW_S", "BUFFER", "FINAL_TRIES", "Ledger", "LedgerUnavailable"]

log = get_logger("trio_balancer.ledger.writer")

# Records waiting for the writer. Far above any burst a process sees; when it is full anyway
# (a stalled disk), the handler waits for room (shielded) rather than drop a record.
BUFFER = 10_000
BATCH_MAX = 1_000
# How long the writer gathers records after the first before writing them in one commit; well
# inside the promise that a crash loses at most a second.
BATCH_WINDOW_S = 0.1
# Tries at shutdown before the records still held back are given up (logged whole).
FINAL_TRIES = 3


class LedgerUnavailable(Exception):
    """The ledger cannot be opened at start; the message names the path and the reason."""


class Ledger:
    """The writer task and the channel that feeds it.

    With a database server as the primary store (PostgreSQL), a batch it cannot take goes to
    a local SQLite spill file instead of waiting: nothing is lost and requests never wait for
    the database. A drain loop moves spilled records to the primary once it answers again.

    A batch that neither the primary nor a spill file takes (a full disk under a SQLite
    ledger) waits in a backlog in memory, bounded at ``BACKLOG_MAX`` records, and is retried
    with backoff (0.1 s doubling to 5 s) for as long as the process runs; the writer goes on
    meanwhile. Past the bound the oldest records are given up: each is logged whole at error
    level (an operator can recover it from the log) and counted in ``lost``. While anything is
    spilled or held back, ``degraded`` is true (logged, on /status and in the metrics).
    """

    def __init__(self, url: str, *, spill_path: str | None = None) -> None:
        self.url = url
        self.path = redact_url(url) if not url.startswith("sqlite:///") else sqlite_path(url)
        self._spill_path = os.path.expanduser(spill_path) if spill_path else None
        self._send, self._recv = trio.open_memory_channel[Record](BUFFER)
        self._backlog = Backlog()
        self._sink = SpillingStore(url, self.path, self._spill_path, held=self._backlog)
        self.reader = LedgerReader(url, schema_ready=lambda: self._sink.primary_migrated)
        self._closed = False
        self._flushed = trio.Event()

    @property
    def degraded(self) -> bool:
        return self._sink.degraded or bool(self._backlog)

    @property
    def backlog(self) -> int:
        """Records waiting in memory because no store would take them."""
        return len(self._backlog)

    @property
    def written(self) -> int:
        """Records written to the primary store or the spill file."""
        return self._sink.written

    @property
    def spilled(self) -> int:
        """Records currently in the spill file."""
        return self._sink.spilled

    @property
    def failed_writes(self) -> int:
        return self._sink.failed_writes

    @property
    def lost(self) -> int:
        """Records given up (logged whole): the backlog overflowed, or shutdown."""
        return self._sink.lost

    async def wait_written(self, count: int) -> None:
        """Return once ``count`` records in all have been written (tests, status)."""
        await self._sink.wait_written(count)

    async def record(self, record: Record) -> None:
        """Queue a record; waits only if the writer is far behind, and never loses it."""
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            with trio.CancelScope(shield=True):
                await self._send.send(record)
        except trio.ClosedResourceError:
            # After shutdown began: write it directly rather than lose it.
            with trio.CancelScope(shield=True):
                if self._closed:
                    await self._write_late([record])
                else:
                    await self._write([record])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the stores, then write what arrives until the channel closes.

        Raises :class:`LedgerUnavailable` before ``started`` when nothing could take a record:
        a SQLite ledger that cannot be opened, or a database server down with no spill file.
        """
        await self._open_stores()
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                if self._sink.spill is not None:
                    nursery.start_soon(self._sink.drain_spill)
                await self._write_until_closed()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._give_up_backlog()
            self._flushed.set()

    async def _open_stores(self) -> None:
        sqlite = self.url.startswith("sqlite:///")
        if not await self._sink.open_primary() and (sqlite or self._spill_path is None):
            raise LedgerUnavailable(f"cannot open the ledger at {self.path}: {self._sink.open_error}")
        if self._spill_path is not None and not sqlite:
            try:
                await self._sink.open_spill()
            except Exception as exc:
                raise LedgerUnavailable(
                    f"cannot open the ledger's spill file at {self._spill_path}: {short_error(exc)}"
                ) from None

    async def _write_until_closed(self) -> None:
        async with self._recv:
            while True:
                first: Record | None = None
                # Only the wait for a record is bounded; never a batch in hand.
                with trio.move_on_after(self._backlog.wait(trio.current_time())):
                    try:
                        first = await self._recv.receive()
                    except trio.EndOfChannel:
                        return
                if first is None:
                    await self._flush_backlog()  # idle with records held back: their retry is due
                    continue
                batch = [first]
                # Gather what arrives in the next moment: one commit for many records (a
                # commit per record cost ~10 % of a busy balancer's CPU).
                with trio.move_on_after(BATCH_WINDOW_S):
                    while len(batch) < BATCH_MAX:
                        try:
                            batch.append(await self._recv.receive())
                        except trio.EndOfChannel:
                            break
                await self._write(batch)

    async def _write(self, batch: list[Record]) -> None:
        """Write one batch (after any backlog, to keep order); shielded so shutdown cannot drop it."""
        with trio.CancelScope(shield=True):
            if self._backlog:
                self._hold(batch)
                await self._flush_backlog()
                return
            left = await self._sink.store_batch(batch)
            if left:
                self._hold(left)

    def _hold(self, batch: list[Record]) -> None:
        if not self._backlog:
            log.error("ledger.backlog", url=self.path, retry_in_s=self._backlog.retry_in)
        for record in self._backlog.hold(batch, trio.current_time()):
            self._sink.lose(record, "backlog full")

    async def _flush_backlog(self, *, now: bool = False) -> None:
        """Retry the backlog, oldest first, if its time has come; back off when it fails again."""
        if not now and not self._backlog.due(trio.current_time()):
            return
        while self._backlog:
            chunk = self._backlog.head(BATCH_MAX)
            left = await self._sink.store_batch(chunk)
            self._backlog.settle(len(chunk), left)
            if len(left) == len(chunk):
                self._backlog.back_off(trio.current_time())
                return
        self._backlog.recovered()
        log.info("ledger.recovered", url=self.path)

    async def _give_up_backlog(self) -> None:
        """At the end: a few last tries, then every record still held is logged and counted lost."""
        for _ in range(FINAL_TRIES):
            if not self._backlog:
                return
            await self._flush_backlog(now=True)
            if self._backlog:
                await trio.sleep(RETRY_FIRST_S)
        while self._backlog:
            self._sink.lose(self._backlog.pop_oldest(), "shutdown with the ledger unwritable")

    async def aclose(self) -> None:
        """Stop taking records and wait until every queued one is written."""
        self._send.close()
        await self._flushed.wait()
        self._closed = True
        await self._sink.close()
        await self.reader.aclose()

    async def _write_late(self, records: list[Record]) -> None:
        """A record that arrives after the ledger closed (a handler cut at shutdown): written
        on a connection of its own, or logged whole and counted if even that fails."""

        def write() -> None:
            store = open_store(self.url)
            try:
                store.write(records)
            finally:
                store.close()

        try:
            await self._sink.on_store(write)
            self._sink.count_written(len(records))
        except Exception as exc:
            log.error("ledger.write_failed", url=self.path, error=short_error(exc), records=len(records))
            for record in records:
                self._sink.lose(record, "arrived after the ledger closed and could not be written")
