"""The ledger's schema, one migration at a time, written out for each database it runs on.

Migration ``n`` (1-based) brings a database at version ``n - 1`` to version ``n``; a store
keeps its version (SQLite in ``PRAGMA user_version``, PostgreSQL in a table) and runs the ones
it lacks, in order, when it is opened for writing. A migration, once released, never changes:
databases out there are at its version. Both dialects carry the same columns and indexes;
they differ only in types (SQLite's REAL is PostgreSQL's DOUBLE PRECISION: token and byte
counts may pass 2**31 in a long-lived ledger's sums, which PostgreSQL computes in NUMERIC
anyway).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "POSTGRES_MIGRATIONS", "SQLITE_MIGRATIONS", "check_known_version"]

# Migrations 2 to 4 use the same SQL on both databases.
_BOTH: tuple[str, ...] = (
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
    # 4: why the request took its route (the conditions that matched)
    """
    ALTER TABLE requests ADD COLUMN route_why TEXT;
    """,
)

# 5: which balancer process served a record (budgets read the others' spend); the records of
# one key, model or provider by time (the console's filters); and the hourly rollup the
# console's charts read, kept by a trigger in the writing transaction (only rows actually
# inserted fire it: a record written twice is counted once), back-filled from the records.
_ROLLUP_COLUMNS = (
    "requests, errors, flagged, input_tokens, output_tokens, cache_creation_input_tokens,"
    " cache_read_input_tokens, cost_usd"
)
_ROLLUP_KEY = "hour, client, model, provider"
_ROLLUP_ROW = (
    "{hour}, NEW.client, coalesce(NEW.model, ''), coalesce(NEW.provider, ''), 1,"
    " CASE WHEN NEW.status >= 400 OR NEW.status IS NULL THEN 1 ELSE 0 END, NEW.flagged,"
    " NEW.input_tokens, NEW.output_tokens, NEW.cache_creation_input_tokens,"
    " NEW.cache_read_input_tokens, coalesce(NEW.cost_usd, 0)"
)
_ROLLUP_ADD = ", ".join(f"{c} = usage_hours.{c} + excluded.{c}" for c in _ROLLUP_COLUMNS.split(", "))
_ROLLUP_BACKFILL = (
    f"INSERT INTO usage_hours ({_ROLLUP_KEY}, {_ROLLUP_COLUMNS})"
    " SELECT {hour}, client, coalesce(model, ''), coalesce(provider, ''), count(*),"
    " sum(CASE WHEN status >= 400 OR status IS NULL THEN 1 ELSE 0 END), sum(flagged),"
    " sum(input_tokens), sum(output_tokens), sum(cache_creation_input_tokens),"
    " sum(cache_read_input_tokens), sum(coalesce(cost_usd, 0))"
    " FROM requests GROUP BY 1, 2, 3, 4"
)


def _rollup_table(real: str, count: str) -> str:
    counts = ", ".join(f"{c} {count} NOT NULL" for c in _ROLLUP_COLUMNS.split(", ")[:-1])
    return (
        "ALTER TABLE requests ADD COLUMN instance TEXT;"
        " CREATE INDEX requests_client_started_at ON requests (client, started_at);"
        " CREATE INDEX requests_provider_started_at ON requests (provider, started_at);"
        " CREATE INDEX requests_model_started_at ON requests (model, started_at);"
        f" CREATE TABLE usage_hours (hour {count} NOT NULL, client TEXT NOT NULL, model TEXT NOT NULL,"
        f" provider TEXT NOT NULL, {counts}, cost_usd {real} NOT NULL, PRIMARY KEY ({_ROLLUP_KEY}));"
    )


_SQLITE_5 = (
    _rollup_table("REAL", "INTEGER") + f" CREATE TRIGGER requests_usage_hours AFTER INSERT ON requests BEGIN"
    f" INSERT INTO usage_hours ({_ROLLUP_KEY}, {_ROLLUP_COLUMNS})"
    f" VALUES ({_ROLLUP_ROW.format(hour='CAST(NEW.started_at / 3600 AS INTEGER)')})"
    f" ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET {_ROLLUP_ADD}; END;"
    + " "
    + _ROLLUP_BACKFILL.format(hour="CAST(started_at / 3600 AS INTEGER)")
)
_COUNT_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                  "events", "bytes")  # fmt: skip
_POSTGRES_5 = (
    # Counts as SQLite keeps them (64 bits): a provider reporting 3e9 tokens was refused by
    # INTEGER columns, and four counts of one row added past 2**31 broke every sum (by attack).
    "ALTER TABLE requests"
    + ",".join(f" ALTER COLUMN {c} TYPE BIGINT" for c in _COUNT_COLUMNS)
    + "; "
    + _rollup_table("DOUBLE PRECISION", "BIGINT")
    + " CREATE FUNCTION requests_usage_hours() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    f" INSERT INTO usage_hours ({_ROLLUP_KEY}, {_ROLLUP_COLUMNS})"
    f" VALUES ({_ROLLUP_ROW.format(hour='floor(NEW.started_at / 3600)')})"
    f" ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET {_ROLLUP_ADD}; RETURN NULL; END $$;"
    " CREATE TRIGGER requests_usage_hours AFTER INSERT ON requests"
    " FOR EACH ROW EXECUTE FUNCTION requests_usage_hours();"
    + " "
    + _ROLLUP_BACKFILL.format(hour="floor(started_at / 3600)")
)

SQLITE_MIGRATIONS: tuple[str, ...] = (
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
    *_BOTH,
    _SQLITE_5,
)

POSTGRES_MIGRATIONS: tuple[str, ...] = (
    # 1: the requests table
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        started_at DOUBLE PRECISION NOT NULL,
        client TEXT NOT NULL,
        model TEXT,
        path TEXT NOT NULL,
        stream INTEGER NOT NULL,
        status INTEGER,
        route TEXT,
        provider TEXT,
        upstream_model TEXT,
        error_type TEXT,
        ttfb_ms DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
        usage_source TEXT NOT NULL,
        cost_usd DOUBLE PRECISION,
        priced INTEGER NOT NULL,
        dedup_role TEXT NOT NULL,
        disconnected INTEGER NOT NULL,
        attempts TEXT NOT NULL,
        events INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX requests_started_at ON requests (started_at);
    """,
    *_BOTH,
    _POSTGRES_5,
)

# The name the ledger has always exported (SQLite's, the default backend's).
MIGRATIONS = SQLITE_MIGRATIONS


def check_known_version(version: int) -> None:
    """A ledger written by a newer balancer has columns this one does not know: refuse it
    rather than fail on every write."""
    if version > len(MIGRATIONS):
        raise ValueError(
            f"its schema is version {version}, newer than this balancer knows ({len(MIGRATIONS)}): upgrade trio-balancer"
        )
