"""The ledger's stores: synchronous SQL on SQLite (standard library) or PostgreSQL (psycopg).

A store is one connection. Call it from one worker thread at a time (the writer and the reader
each hold a lock for theirs) or from the CLI. The SQL is shared by both backends; each store
supplies its connection, placeholder, migrations and the few expressions that differ.

Opened for writing (the default), a store brings the database to the schema this balancer
knows, once, when it is opened: see :mod:`trio_balancer.ledger.migrations`. Opened for reading
(``migrate=False``) it takes the schema as it finds it; the writer migrated it already.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from trio_balancer.ledger.migrations import (
    POSTGRES_MIGRATIONS,
    SQLITE_MIGRATIONS,
    check_known_version,
)
from trio_balancer.ledger.queries import RecordFilter, browse_sql, record_sql, series_sql
from trio_balancer.ledger.record import (
    COLUMNS,
    GROUP_COLUMNS,
    Record,
    plain_value,
    record_from_row,
    record_row,
)
from trio_balancer.redaction import redact_url

__all__ = ["STORE_ERRORS", "LedgerStore", "PostgresStore", "SqliteStore", "open_store", "sqlite_path"]


def _store_errors() -> tuple[type[Exception], ...]:
    """What a store raises when its database is away or refuses: SQLite's, the OS's, and
    psycopg's when it is installed (the [cluster] extra)."""
    errors: list[type[Exception]] = [sqlite3.Error, OSError]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


STORE_ERRORS = _store_errors()


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/or/absolute`` (``~`` expanded) -> a filesystem path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return os.path.expanduser(url.removeprefix("sqlite:///"))


def open_store(url: str, *, migrate: bool = True) -> LedgerStore:
    """The store at ``url``; ``migrate=False`` opens it for reading only (see the module doc)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(sqlite_path(url), migrate=migrate)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, migrate=migrate)
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


class LedgerStore:
    """Synchronous SQL access to the ledger; call it from worker threads (or the CLI).

    The SQL is shared by both backends; each subclass supplies its connection, placeholder,
    migrations and the few expressions that differ.
    """

    placeholder = "?"
    day_expr = "date(started_at, 'unixepoch')"
    insert_verb = "INSERT OR IGNORE INTO"
    insert_suffix = ""
    floor_div = "CAST(({x}) / {w} AS INTEGER)"  # started_at is never negative: truncation is floor
    explain_prefix = "EXPLAIN QUERY PLAN "
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

    @property
    def broken(self) -> bool:
        """The connection is gone (a database server restarted): open another to go on."""
        return False

    def _write_rows(self, sql: str, rows: list[list[Any]]) -> None:
        raise NotImplementedError

    def write(self, records: Sequence[Record]) -> None:
        columns = [*COLUMNS, "flagged"]
        marks = ", ".join([self.placeholder] * len(columns))
        sql = f"{self.insert_verb} requests ({', '.join(columns)}) VALUES ({marks}){self.insert_suffix}"
        # In the rollup's key order: the trigger's upserts of concurrent writers (instances
        # sharing PostgreSQL) then lock rollup rows in one order, and never deadlock.
        ordered = sorted(
            records, key=lambda r: (r.started_at // 3600, r.client, r.model or "", r.provider or "")
        )
        self._write_rows(sql, [record_row(r) for r in ordered])

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
        return [{k: plain_value(v) for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]

    def spend_by_client(
        self, month_start: float, day_start: float, *, excluding: Sequence[str] = ()
    ) -> list[tuple[str, float, int, float, int]]:
        """``(client, usd since month_start, tokens since, usd since day_start, tokens since)``
        for every client, over the records of every balancer process but those ``excluding``
        names (the caller's own, which it counts itself). Records without a cost add no dollars."""
        m = self.placeholder
        ids = list(excluding) or [""]
        tokens = "input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens"
        sql = (
            f"SELECT client, sum(coalesce(cost_usd, 0)), sum({tokens}),"
            f" sum(CASE WHEN started_at >= {m} THEN coalesce(cost_usd, 0) ELSE 0 END),"
            f" sum(CASE WHEN started_at >= {m} THEN {tokens} ELSE 0 END)"
            f" FROM requests WHERE started_at >= {m}"
            f" AND (instance IS NULL OR instance NOT IN ({', '.join([m] * len(ids))}))"
            " GROUP BY client"
        )
        rows = self._execute(sql, [day_start, day_start, month_start, *ids]).fetchall()
        return [
            (str(c), float(plain_value(mu) or 0), int(plain_value(mt) or 0), float(plain_value(du) or 0),
             int(plain_value(dt) or 0))
            for c, mu, mt, du, dt in rows
        ]  # fmt: skip

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
            f"SELECT {', '.join(COLUMNS)}, flagged FROM requests {where} ORDER BY started_at, id LIMIT {m} OFFSET {m}",
            [*args, limit, offset],
        )
        return _record_rows(cur)

    def series(
        self,
        f: RecordFilter,
        *,
        width_s: int,
        offsets: Sequence[tuple[float | None, int]],
        group: str | None = None,
    ) -> list[dict[str, Any]]:
        """Totals per local day or hour (see :func:`.queries.series_sql`)."""
        sql, args = series_sql(
            f, width_s=width_s, offsets=offsets, group=group, mark=self.placeholder, floor_div=self.floor_div
        )
        cur = self._execute(sql, args)
        names = [d[0] for d in cur.description]
        rows = [{k: plain_value(v) for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]
        for row in rows:
            row["bucket"] = int(row["bucket"])
        return rows

    def browse(
        self, f: RecordFilter, *, before: tuple[float, str] | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """One page of records matching ``f``, newest first, after ``before``."""
        sql, args = browse_sql(f, columns=COLUMNS, before=before, limit=limit, mark=self.placeholder)
        return _record_rows(self._execute(sql, args))

    def record(self, record_id: str) -> dict[str, Any] | None:
        rows = _record_rows(self._execute(record_sql(columns=COLUMNS, mark=self.placeholder), [record_id]))
        return rows[0] if rows else None

    def plan(self, sql: str, args: Sequence[Any]) -> list[str]:
        """How the database runs ``sql`` (EXPLAIN), one line per step: which indexes it uses."""
        return [
            " ".join(str(c) for c in row) for row in self._execute(self.explain_prefix + sql, args).fetchall()
        ]

    def take(self, limit: int) -> list[Record]:
        """The oldest records as Record objects (draining a spill file)."""
        return [record_from_row(r) for r in self.records(limit=limit)]

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            marks = ", ".join([self.placeholder] * len(ids))
            self._write_rows(f"DELETE FROM requests WHERE id IN ({marks})", [list(ids)])


def _record_rows(cur: Any) -> list[dict[str, Any]]:
    """Records as :meth:`LedgerStore.records` returns them: plain values, attempts parsed."""
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        item = {k: plain_value(v) for k, v in zip(names, row, strict=True)}
        item["attempts"] = json.loads(item["attempts"])
        for key in ("stream", "priced", "disconnected", "flagged"):
            item[key] = bool(item[key])
        out.append(item)
    return out


class SqliteStore(LedgerStore):
    """The ledger in one SQLite file, in WAL mode; its schema version in ``PRAGMA user_version``.

    ``check_same_thread=False``: the connection moves between worker threads, so whoever holds
    a store must use it from one thread at a time (two at once crash the process).
    """

    def __init__(self, path: str, *, migrate: bool = True) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        self._conn.execute("PRAGMA busy_timeout=5000")
        if migrate:
            self.migrate()

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, args)

    def _write_rows(self, sql: str, rows: list[list[Any]]) -> None:
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(sql, rows)

    def migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        check_known_version(version)
        for number, script in enumerate(SQLITE_MIGRATIONS[version:], start=version + 1):
            self._conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


class PostgresStore(LedgerStore):
    """The same ledger in PostgreSQL, for several balancer instances (psycopg, sync, in threads)."""

    placeholder = "%s"
    day_expr = "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    insert_verb = "INSERT INTO"
    insert_suffix = " ON CONFLICT (id) DO NOTHING"
    floor_div = "floor(({x}) / {w})"  # a cast to an integer would round
    explain_prefix = "EXPLAIN "

    def __init__(self, url: str, *, connect_timeout: float = 3.0, migrate: bool = True) -> None:
        import psycopg

        self.url = url
        self.path = redact_url(url)
        # A statement that hangs (a server that stopped answering) fails after 30 s and the
        # batch spills, instead of holding the writer, and every handler behind it, forever.
        self._conn = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, int(connect_timeout)),
            options="-c statement_timeout=30000",
        )
        if migrate:
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
            check_known_version(version)
            if row is None:
                self._conn.execute("INSERT INTO trio_balancer_schema (version) VALUES (0)")
            for number, script in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
                self._conn.execute(script)
                self._conn.execute("UPDATE trio_balancer_schema SET version = %s", (number,))

    @property
    def version(self) -> int:
        return int(self._conn.execute("SELECT version FROM trio_balancer_schema").fetchone()[0])  # type: ignore[index]

    def close(self) -> None:
        self._conn.close()

    @property
    def broken(self) -> bool:
        return self._conn.closed  # psycopg: closed includes a connection the server dropped
