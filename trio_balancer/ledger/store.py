"""The usage ledger: one record per request, written by one task, read by queries and the CLI.

Request handlers hand records to :meth:`Ledger.record`, which puts them on a bounded memory
channel without waiting in the normal case; a single writer task drains the channel and writes
whatever has accumulated in one transaction, in a worker thread, so nothing on the streaming
path waits for the disk. The writer gathers records for at most 100 ms after the first one, then writes them in
one transaction, so a crash loses at most the last fraction of a second. On
graceful shutdown the channel is closed after the last flight ended and the writer drains it.

Storage is SQLite in WAL mode (standard library), with versioned schema migrations in
``PRAGMA user_version``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from trio_balancer.logging import get_logger

__all__ = [
    "GROUP_COLUMNS",
    "MIGRATIONS",
    "Ledger",
    "LedgerStore",
    "LedgerUnavailable",
    "Record",
    "SqliteStore",
    "open_store",
    "parse_time",
    "sqlite_path",
]

log = get_logger("trio_balancer.ledger")
T = TypeVar("T")

# Records waiting for the writer. Far above any burst a process sees; when it is full anyway
# (a stalled disk), the handler waits for room (shielded) rather than drop a record.
BUFFER = 10_000
BATCH_MAX = 1_000
# How long the writer gathers records after the first before writing them in one commit; well
# inside the promise that a crash loses at most a second.
BATCH_WINDOW_S = 0.1
# Records that no store would take wait in memory, retried with backoff (0.1 s doubling to
# 5 s). A record is ~1 KB in memory, so the bound costs at most ~50 MB; at a busy team's
# ~20 requests/s it covers 40 minutes of a full disk.
BACKLOG_MAX = 50_000
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
# Tries at shutdown before the records still held back are given up (logged whole).
FINAL_TRIES = 3
# Rounds in which the store took other records but refused this one, before it is given up.
REFUSALS_TO_GIVE_UP = 3
# How often the spill file is checked for records to move back to the primary database.
DRAIN_INTERVAL_S = 1.0

GROUP_COLUMNS = {"provider": "provider", "model": "model", "client": "client", "upstream_model": "upstream_model",
                 "route": "route", "status": "status", "usage_source": "usage_source", "dedup_role": "dedup_role",
                 "outcome": "outcome",
                 "day": "day"}  # fmt: skip  # "day" is an expression each backend supplies


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
    disconnected: bool = False  # the client left before the end (outcome "client_left")
    attempts: tuple[dict[str, Any], ...] = ()
    events: int = 0
    bytes: int = 0
    # How the response ended for the client: delivered | client_left | cut (by the balancer:
    # shutdown, a listener too far behind a shared stream, a broken body).
    outcome: str = "delivered"

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
    UPDATE requests SET flagged = CASE WHEN usage_source IN ('partial', 'estimated') OR priced = 0 THEN 1 ELSE 0 END;
    CREATE INDEX requests_flagged ON requests (flagged, started_at);
    """,
    # 3: how each response ended for its client
    """
    ALTER TABLE requests ADD COLUMN outcome TEXT NOT NULL DEFAULT 'delivered';
    UPDATE requests SET outcome = 'client_left' WHERE disconnected = 1;
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
    """Synchronous SQL access to the ledger; call it from worker threads (or the CLI).

    The SQL is shared by both backends; each subclass supplies its connection, placeholder,
    migrations and the few expressions that differ.
    """

    placeholder = "?"
    day_expr = "date(started_at, 'unixepoch')"
    insert_verb = "INSERT OR IGNORE INTO"
    insert_suffix = ""
    url: str

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def migrate(self) -> None:
        raise NotImplementedError

    @property
    def version(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _write_rows(self, sql: str, rows: list[list[Any]]) -> None:
        raise NotImplementedError

    def write(self, records: Sequence[Record]) -> None:
        columns = [*_COLUMNS, "flagged"]
        marks = ", ".join([self.placeholder] * len(columns))
        sql = f"{self.insert_verb} requests ({', '.join(columns)}) VALUES ({marks}){self.insert_suffix}"
        self._write_rows(sql, [_row(r) for r in records])

    def count(self) -> int:
        return int(self._execute("SELECT count(*) FROM requests").fetchone()[0])

    def summary(
        self, since: float | None = None, until: float | None = None, group_by: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        groups = list(group_by)
        for g in groups:
            if g not in GROUP_COLUMNS:
                raise ValueError(f"cannot group by {g!r}; choose from {', '.join(GROUP_COLUMNS)}")
        where, args = _where(since, until, flagged=False, mark=self.placeholder)
        exprs = {g: (self.day_expr if g == "day" else GROUP_COLUMNS[g]) for g in groups}
        select = [f"{exprs[g]} AS {g}" for g in groups]
        sql = (
            f"SELECT {', '.join([*select, *_TOTALS])} FROM requests {where}"
            + (f" GROUP BY {', '.join(exprs[g] for g in groups)}" if groups else "")
            + " ORDER BY cost_usd DESC, requests DESC"
        )
        cur = self._execute(sql, args)
        names = [d[0] for d in cur.description]
        return [{k: _plain(v) for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]

    def records(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        flagged: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where, args = _where(since, until, flagged=flagged, mark=self.placeholder)
        m = self.placeholder
        cur = self._execute(
            f"SELECT {', '.join(_COLUMNS)}, flagged FROM requests {where} ORDER BY started_at, id LIMIT {m} OFFSET {m}",
            [*args, limit, offset],
        )
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = {k: _plain(v) for k, v in zip(names, row, strict=True)}
            item["attempts"] = json.loads(item["attempts"])
            for key in ("stream", "priced", "disconnected", "flagged"):
                item[key] = bool(item[key])
            out.append(item)
        return out

    def take(self, limit: int) -> list[Record]:
        """The oldest records as Record objects (draining a spill file)."""
        rows = self.records(limit=limit)
        return [
            Record(**{**{k: v for k, v in r.items() if k != "flagged"}, "attempts": tuple(r["attempts"])})
            for r in rows
        ]

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            marks = ", ".join([self.placeholder] * len(ids))
            self._write_rows(f"DELETE FROM requests WHERE id IN ({marks})", [list(ids)])


class SqliteStore(LedgerStore):
    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        self._conn.execute("PRAGMA busy_timeout=5000")
        self.migrate()

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, args)

    def _write_rows(self, sql: str, rows: list[list[Any]]) -> None:
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(sql, rows)

    def migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        _check_known(version)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


# The same schema in PostgreSQL's types (SQLite's REAL is a double; token and byte counts may
# pass 2**31 in a long-lived ledger's sums, which PostgreSQL computes in NUMERIC anyway).
PG_MIGRATIONS: tuple[str, ...] = tuple(m.replace(" REAL", " DOUBLE PRECISION") for m in MIGRATIONS)


class PostgresStore(LedgerStore):
    """The same ledger in PostgreSQL, for several balancer instances (psycopg, sync, in threads)."""

    placeholder = "%s"
    day_expr = "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    insert_verb = "INSERT INTO"
    insert_suffix = " ON CONFLICT (id) DO NOTHING"

    def __init__(self, url: str, *, connect_timeout: float = 3.0) -> None:
        import psycopg

        self.url = url
        self.path = _redact_url(url)
        # A statement that hangs (a server that stopped answering) fails after 30 s and the
        # batch spills, instead of holding the writer, and every handler behind it, forever.
        self._conn = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, int(connect_timeout)),
            options="-c statement_timeout=30000",
        )
        self.migrate()

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, args)

    def _write_rows(self, sql: str, rows: list[list[Any]]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(sql, rows)

    def migrate(self) -> None:
        with self._conn.transaction():
            self._conn.execute("CREATE TABLE IF NOT EXISTS trio_balancer_schema (version INTEGER NOT NULL)")
            self._conn.execute(
                "LOCK TABLE trio_balancer_schema IN EXCLUSIVE MODE"
            )  # instances start together
            row = self._conn.execute("SELECT version FROM trio_balancer_schema").fetchone()
            version = row[0] if row else 0
            _check_known(version)
            if row is None:
                self._conn.execute("INSERT INTO trio_balancer_schema (version) VALUES (0)")
            for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
                self._conn.execute(script)
                self._conn.execute("UPDATE trio_balancer_schema SET version = %s", (number,))

    @property
    def version(self) -> int:
        return int(self._conn.execute("SELECT version FROM trio_balancer_schema").fetchone()[0])  # type: ignore[index]

    def close(self) -> None:
        self._conn.close()


def _check_known(version: int) -> None:
    """A ledger written by a newer balancer has columns this one does not know: refuse it
    rather than fail on every write."""
    if version > len(MIGRATIONS):
        raise ValueError(
            f"its schema is version {version}, newer than this balancer knows ({len(MIGRATIONS)}): upgrade trio-balancer"
        )


def _redact_url(url: str) -> str:
    """A database URL without its password, for logs and /status."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def _plain(value: Any) -> Any:
    """Database numbers as plain ints and floats (PostgreSQL sums are Decimal)."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def open_store(url: str) -> LedgerStore:
    if url.startswith("sqlite:///"):
        return SqliteStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"unsupported ledger URL {url!r}")


_TOTALS = [  # portable: the same SQL runs on SQLite and PostgreSQL
    "count(*) AS requests",
    "sum(input_tokens) AS input_tokens",
    "sum(output_tokens) AS output_tokens",
    "sum(cache_creation_input_tokens) AS cache_creation_input_tokens",
    "sum(cache_read_input_tokens) AS cache_read_input_tokens",
    "round(CAST(sum(coalesce(cost_usd, 0)) AS NUMERIC), 6) AS cost_usd",
    "sum(flagged) AS flagged",
    "sum(CASE WHEN priced = 0 THEN 1 ELSE 0 END) AS unpriced",
    "sum(CASE WHEN status >= 400 OR status IS NULL THEN 1 ELSE 0 END) AS errors",
]


def _where(
    since: float | None, until: float | None, *, flagged: bool, mark: str = "?"
) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since is not None:
        clauses.append(f"started_at >= {mark}")
        args.append(since)
    if until is not None:
        clauses.append(f"started_at < {mark}")
        args.append(until)
    if flagged:
        clauses.append("flagged = 1")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


# The largest count a column takes (SQLite and PostgreSQL BIGINT are signed 64-bit). A provider
# that reports more tokens than this is lying; the count is kept at the bound, not refused.
_MAX_COUNT = 2**62


def _storable(value: Any) -> Any:
    """A value any backend takes: text without lone surrogates or NUL (a client's model name
    may carry either), counts within 64 bits, finite numbers."""
    if isinstance(value, str):
        if not value.isascii():
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return max(-_MAX_COUNT, min(_MAX_COUNT, value))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _row(r: Record) -> list[Any]:
    values = [_storable(getattr(r, name)) for name in _COLUMNS]
    attempts = json.dumps(list(r.attempts), ensure_ascii=True)  # ASCII: lone surrogates escaped
    values[_COLUMNS.index("attempts")] = attempts.replace("\\u0000", "\\ufffd")
    return [*values, int(r.flagged)]


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
        self.path = _redact_url(url) if not url.startswith("sqlite:///") else sqlite_path(url)
        self._spill_path = os.path.expanduser(spill_path) if spill_path else None
        self._send, self._recv = trio.open_memory_channel[Record](BUFFER)
        self.store: LedgerStore | None = None
        self.spill: SqliteStore | None = None
        self.spilled = 0  # records currently in the spill file
        self.written = 0  # records written to the primary store or the spill file
        self.failed_writes = 0
        self.lost = 0  # records given up (logged whole): the backlog overflowed, or shutdown
        self._backlog: deque[Record] = deque()
        self._open_error = ""
        self._lock = trio.Lock()  # one thread at a time on the stores' connections
        self._refusals: dict[str, int] = {}  # record id -> rounds refused while others went in
        self._closed = False
        self._retry_in = RETRY_FIRST_S
        self._retry_at = 0.0
        self._flushed = trio.Event()
        self._wrote = trio.Event()

    @property
    def degraded(self) -> bool:
        return self.store is None or self.spilled > 0 or bool(self._backlog)

    @property
    def backlog(self) -> int:
        """Records waiting in memory because no store would take them."""
        return len(self._backlog)

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
            with trio.CancelScope(shield=True):
                if self._closed:
                    await self._write_late([record])
                else:
                    await self._write([record])

    async def _open_primary(self) -> bool:
        try:
            self.store = await trio.to_thread.run_sync(open_store, self.url)
        except Exception as exc:  # any driver error: the database is not there yet
            self.store = None
            self._open_error = _short(exc)
            log.error("ledger.unavailable", url=self.path, error=self._open_error)
            return False
        log.info("ledger.open", url=self.path, schema=self.store.version)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the stores, then write what arrives until the channel closes.

        Raises :class:`LedgerUnavailable` before ``started`` when nothing could take a record:
        a SQLite ledger that cannot be opened, or a database server down with no spill file.
        """
        sqlite = self.url.startswith("sqlite:///")
        if not await self._open_primary() and (sqlite or self._spill_path is None):
            raise LedgerUnavailable(f"cannot open the ledger at {self.path}: {self._open_error}")
        if self._spill_path is not None and not sqlite:
            try:
                self.spill = await trio.to_thread.run_sync(SqliteStore, self._spill_path)
                self.spilled = await trio.to_thread.run_sync(self.spill.count)
            except Exception as exc:
                raise LedgerUnavailable(
                    f"cannot open the ledger's spill file at {self._spill_path}: {_short(exc)}"
                ) from None
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                if self.spill is not None:
                    nursery.start_soon(self._drain_spill)
                await self._write_until_closed()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._give_up_backlog()
            self._flushed.set()

    async def _write_until_closed(self) -> None:
        async with self._recv:
            while True:
                first: Record | None = None
                wait = max(0.0, self._retry_at - trio.current_time()) if self._backlog else math.inf
                with trio.move_on_after(wait):  # only the wait for a record; never a batch in hand
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
            left = await self._store(batch)
            if left:
                self._hold(left)

    async def _store(self, batch: list[Record]) -> list[Record]:
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
                self._lose(record, "the store refuses this record")
            else:
                self._refusals[record.id] = rounds
                kept.append(record)
        return kept

    async def _store_whole(self, batch: list[Record]) -> bool:
        store = self.store
        if store is not None:
            try:
                await self._on_store(store.write, batch)
                self._count(len(batch))
                return True
            except Exception as exc:
                self.failed_writes += 1
                if self.spill is not None:
                    # A database server: reconnect from scratch later (the drain loop).
                    self.store = None
                    with suppress(Exception):
                        await self._on_store(store.close)
                if not self._backlog:
                    log.error("ledger.write_failed", url=self.path, error=_short(exc), records=len(batch))
        if self.spill is not None:
            try:
                await self._on_store(self.spill.write, batch)
            except Exception as exc:
                self.failed_writes += 1
                log.error("ledger.spill_failed", spill=self._spill_path, error=_short(exc))
                return False
            if not self.spilled:
                log.error("ledger.spilling", url=self.path, spill=self._spill_path)
            self.spilled += len(batch)
            self._count(len(batch))
            return True
        return False

    def _hold(self, batch: list[Record]) -> None:
        if not self._backlog:
            log.error("ledger.backlog", url=self.path, retry_in_s=self._retry_in)
            self._retry_at = trio.current_time() + self._retry_in
        self._backlog.extend(batch)
        while len(self._backlog) > BACKLOG_MAX:
            self._lose(self._backlog.popleft(), "backlog full")

    def _lose(self, record: Record, why: str) -> None:
        self.lost += 1
        log.error("ledger.record_lost", why=why, record=attrs.asdict(record))

    async def _flush_backlog(self, *, now: bool = False) -> None:
        """Retry the backlog, oldest first, if its time has come; back off when it fails again."""
        if not now and trio.current_time() < self._retry_at:
            return
        while self._backlog:
            # Left in the backlog while it is written: it is what `degraded` and /status count.
            chunk = list(itertools.islice(self._backlog, BATCH_MAX))
            left = await self._store(chunk)
            for _ in chunk:
                self._backlog.popleft()
            self._backlog.extendleft(reversed(left))  # still first in line
            if len(left) == len(chunk):
                self._retry_in = min(self._retry_in * 2, RETRY_MAX_S)
                self._retry_at = trio.current_time() + self._retry_in
                return
        self._retry_in = RETRY_FIRST_S
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
            self._lose(self._backlog.popleft(), "shutdown with the ledger unwritable")

    def _count(self, n: int) -> None:
        self.written += n
        wrote, self._wrote = self._wrote, trio.Event()
        wrote.set()

    async def _drain_spill(self) -> None:
        """Move spilled records to the primary store once it answers again."""
        assert self.spill is not None
        while True:
            await trio.sleep(DRAIN_INTERVAL_S)
            if not self.spilled:
                continue
            if self.store is None and not await self._open_primary():
                continue
            while self.spilled and self.store is not None:
                try:
                    records = await self._on_store(self.spill.take, 500)
                except Exception as exc:  # the spill file itself failing: try again next round
                    log.error("ledger.spill_read_failed", error=_short(exc))
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

        As in :meth:`_store`, a batch the primary refuses is tried record by record: records it
        refuses while taking others are given up (logged whole) rather than block the spill.
        """
        store, spill = self.store, self.spill
        assert store is not None and spill is not None
        try:
            await self._on_store(store.write, records)
        except Exception as exc:
            log.error("ledger.drain_failed", error=_short(exc), records=len(records))
            moved, refused = [], []
            for record in records:
                try:
                    await self._on_store(store.write, [record])
                    moved.append(record)
                except Exception:
                    refused.append(record)
            if not moved:
                return False
            for record in refused:
                self._lose(record, "the primary store refuses this spilled record")
        try:
            await self._on_store(spill.delete, [r.id for r in records])
        except Exception as exc:  # moved but not deleted: the next round moves them again, once
            log.error("ledger.spill_delete_failed", error=_short(exc), records=len(records))
            return False
        return True

    async def aclose(self) -> None:
        """Stop taking records and wait until every queued one is written."""
        self._send.close()
        await self._flushed.wait()
        self._closed = True
        for name in ("store", "spill"):
            store = getattr(self, name)
            if store is not None:
                setattr(self, name, None)
                await self._on_store(store.close)

    async def _on_store(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a worker thread, one at a time: a SQLite connection used from two
        threads at once (a late record's write while shutdown closes it) crashes the process."""
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

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
            await self._on_store(write)
            self._count(len(records))
        except Exception as exc:
            log.error("ledger.write_failed", url=self.path, error=_short(exc), records=len(records))
            for record in records:
                self._lose(record, "arrived after the ledger closed and could not be written")

    async def query(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """Run a read query in a thread, on a connection of its own."""

        def run() -> Any:
            store = open_store(self.url)
            try:
                return getattr(store, fn)(*args, **kwargs)
            finally:
                store.close()

        return await trio.to_thread.run_sync(run)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
