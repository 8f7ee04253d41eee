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

# Migrations 2 on use the same SQL on both databases.
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
    # 5: which balancer process served it (budgets read the others' spend), and a key's
    # requests by time (budgets, the console's request browser)
    """
    ALTER TABLE requests ADD COLUMN instance TEXT;
    CREATE INDEX requests_client_started_at ON requests (client, started_at);
    """,
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
