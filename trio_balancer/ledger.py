"""The usage ledger: one record per request, written by one task, read by queries and the CLI.

Request handlers hand records to :meth:`Ledger.record`, which puts them on a bounded memory
channel without waiting in the normal case; a single writer task drains the channel and writes
whatever has accumulated in one transaction, in a worker thread, so nothing on the streaming
path waits for the disk. A record is written as soon as the writer gets to it (there is no
timer), so a crash loses at most what arrived during the last write, well under a second. On
graceful shutdown the channel is closed after the last flight ended and the writer drains it.

Storage is SQLite in WAL mode (standard library), with versioned schema migrations in
``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from .logging import get_logger

__all__ = [
    "GROUP_COLUMNS",
    "Ledger",
    "LedgerStore",
    "Record",
    "parse_time",
    "sqlite_path",
]

log = get_logger("trio_balancer.ledger")

# Records waiting for the writer. Far above any burst a process sees; when it is full anyway
# (a stalled disk), the handler waits for room (shielded) rather than drop a record.
BUFFER = 10_000
BATCH_MAX = 1_000
# A failing write is retried with backoff (0.1 s doubling to 5 s) about 30 s in all.
WRITE_TRIES = 10

GROUP_COLUMNS = {"provider": "provider", "model": "model", "client": "client", "upstream_model": "upstream_model",
                 "route": "route", "status": "status", "usage_source": "usage_source", "dedup_role": "dedup_role",
                 "day": "date(started_at, 'unixepoch')"}  # fmt: skip


@attrs.frozen
class Record:
    id: str
    started_at: float  # unix seconds
    client: str
    model: str | None
    path: str
    stream: bool
    status: int | None
    route: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    error_type: str | None = None
    ttfb_ms: float | None = None
    duration_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # reported | partial | estimated: how the counts were known; none: nothing was generated
    # (the request never reached a provider, or every provider refused it).
    usage_source: str = "none"
    cost_usd: float | None = None
    priced: bool = True  # False: the model has no known price, cost_usd is empty
    dedup_role: str = "off"  # leader | follower | cache | off
    disconnected: bool = False
    attempts: tuple[dict[str, Any], ...] = ()
    events: int = 0
    bytes: int = 0

    @property
    def flagged(self) -> bool:
        """Needs a human look: counts estimated, or no price."""
        return self.usage_source in ("partial", "estimated") or not self.priced


_COLUMNS = [f.name for f in attrs.fields(Record)]

MIGRATIONS: tuple[str, ...] = (
    # 1: the requests table
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        client TEXT NOT NULL,
        model TEXT,
        path TEXT NOT NULL,
        stream INTEGER NOT NULL,
        status INTEGER,
        route TEXT,
        provider TEXT,
        upstream_model TEXT,
        error_type TEXT,
        ttfb_ms REAL,
        duration_ms REAL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
        usage_source TEXT NOT NULL,
        cost_usd REAL,
        priced INTEGER NOT NULL,
        dedup_role TEXT NOT NULL,
        disconnected INTEGER NOT NULL,
        attempts TEXT NOT NULL,
        events INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX requests_started_at ON requests (started_at);
    """,
    # 2: listing flagged records quickly
    """
    ALTER TABLE requests ADD COLUMN flagged INTEGER NOT NULL DEFAULT 0;
    UPDATE requests SET flagged = (usage_source IN ('partial', 'estimated') OR priced = 0);
    CREATE INDEX requests_flagged ON requests (flagged, started_at);
    """,
)


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/or/absolute`` (``~`` expanded) -> a filesystem path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return os.path.expanduser(url.removeprefix("sqlite:///"))


def parse_time(text: str | None) -> float | None:
    """``2026-11-01``, ``2026-11-01T12:00:00`` (UTC unless an offset is given) or unix seconds."""
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import UTC, datetime

    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class LedgerStore:
    """Synchronous SQLite access; call it from worker threads (or the CLI)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        self._conn.execute("PRAGMA busy_timeout=5000")
        self.migrate()

    def migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def write(self, records: Sequence[Record]) -> None:
        columns = [*_COLUMNS, "flagged"]
        sql = (
            f"INSERT OR IGNORE INTO requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        rows = [_row(r) for r in records]
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(sql, rows)

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM requests").fetchone()[0])

    def summary(
        self, since: float | None = None, until: float | None = None, group_by: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        groups = list(group_by)
        for g in groups:
            if g not in GROUP_COLUMNS:
                raise ValueError(f"cannot group by {g!r}; choose from {', '.join(GROUP_COLUMNS)}")
        where, args = _where(since, until, flagged=False)
        select = [f"{GROUP_COLUMNS[g]} AS {g}" for g in groups]
        sql = (
            f"SELECT {', '.join([*select, *_TOTALS])} FROM requests {where}"
            + (f" GROUP BY {', '.join(GROUP_COLUMNS[g] for g in groups)}" if groups else "")
            + " ORDER BY cost_usd DESC, requests DESC"
        )
        cur = self._conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def records(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        flagged: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where, args = _where(since, until, flagged=flagged)
        cur = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)}, flagged FROM requests {where} ORDER BY started_at, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["attempts"] = json.loads(item["attempts"])
            for key in ("stream", "priced", "disconnected", "flagged"):
                item[key] = bool(item[key])
            out.append(item)
        return out


_TOTALS = [
    "count(*) AS requests",
    "sum(input_tokens) AS input_tokens",
    "sum(output_tokens) AS output_tokens",
    "sum(cache_creation_input_tokens) AS cache_creation_input_tokens",
    "sum(cache_read_input_tokens) AS cache_read_input_tokens",
    "round(sum(coalesce(cost_usd, 0)), 6) AS cost_usd",
    "sum(flagged) AS flagged",
    "sum(priced = 0) AS unpriced",
    "sum(status >= 400 OR status IS NULL) AS errors",
]


def _where(since: float | None, until: float | None, *, flagged: bool) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since is not None:
        clauses.append("started_at >= ?")
        args.append(since)
    if until is not None:
        clauses.append("started_at < ?")
        args.append(until)
    if flagged:
        clauses.append("flagged = 1")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _row(r: Record) -> list[Any]:
    values = [getattr(r, name) for name in _COLUMNS]
    values[_COLUMNS.index("attempts")] = json.dumps(list(r.attempts), ensure_ascii=False)
    for name in ("stream", "priced", "disconnected"):
        values[_COLUMNS.index(name)] = int(getattr(r, name))
    cost = r.cost_usd
    values[_COLUMNS.index("cost_usd")] = None if cost is None or math.isnan(cost) else cost
    return [*values, int(r.flagged)]


class Ledger:
    """The writer task and the channel that feeds it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._send, self._recv = trio.open_memory_channel[Record](BUFFER)
        self.store: LedgerStore | None = None
        self.written = 0
        self.failed_writes = 0
        self._flushed = trio.Event()
        self._wrote = trio.Event()

    async def wait_written(self, count: int) -> None:
        """Return once ``count`` records in all have been written (tests, status)."""
        while self.written < count:
            await self._wrote.wait()

    async def record(self, record: Record) -> None:
        """Queue a record; waits only if the writer is far behind, and never loses it."""
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            with trio.CancelScope(shield=True):
                await self._send.send(record)
        except trio.ClosedResourceError:
            # After shutdown began: write it directly rather than lose it.
            if self.store is not None:
                await trio.to_thread.run_sync(self.store.write, [record])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.store = await trio.to_thread.run_sync(LedgerStore, self.path)
        log.info("ledger.open", path=self.path, schema=self.store.version)
        task_status.started()
        try:
            async with self._recv:
                async for first in self._recv:
                    batch = [first]
                    while len(batch) < BATCH_MAX:
                        try:
                            batch.append(self._recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._write(batch)
        finally:
            self._flushed.set()

    async def _write(self, batch: list[Record]) -> None:
        """Write one batch, retrying a failing disk; shielded so shutdown cannot drop it."""
        assert self.store is not None
        delay = 0.1
        with trio.CancelScope(shield=True):
            for _ in range(WRITE_TRIES):
                try:
                    await trio.to_thread.run_sync(self.store.write, batch)
                    self.written += len(batch)
                    wrote, self._wrote = self._wrote, trio.Event()
                    wrote.set()
                    return
                except sqlite3.Error as exc:
                    self.failed_writes += 1
                    log.error("ledger.write_failed", error=str(exc), records=len(batch), retry_in_s=delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        # The database is gone for good: put the records where an operator can recover them.
        for record in batch:
            log.error("ledger.record_not_written", record=attrs.asdict(record))

    async def aclose(self) -> None:
        """Stop taking records and wait until every queued one is written."""
        self._send.close()
        await self._flushed.wait()
        if self.store is not None:
            store, self.store = self.store, None
            await trio.to_thread.run_sync(store.close)

    async def query(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """Run a read query in a thread, on a connection of its own (WAL allows it)."""

        def run() -> Any:
            store = LedgerStore(self.path)
            try:
                return getattr(store, fn)(*args, **kwargs)
            finally:
                store.close()

        return await trio.to_thread.run_sync(run)
