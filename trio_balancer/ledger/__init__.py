"""The usage ledger: one record per request, its schema and migrations, the stores and the writer.

May import the base modules only; it knows records, not requests or flights.

- :mod:`~trio_balancer.ledger.record`: the record and its values as a store takes them (pure);
- :mod:`~trio_balancer.ledger.migrations`: the schema, per database, and its version check;
- :mod:`~trio_balancer.ledger.store`: SQLite and PostgreSQL stores (synchronous, one connection);
- :mod:`~trio_balancer.ledger.writer`: :class:`Ledger`, the task that writes records, with
  :mod:`~trio_balancer.ledger.spill` (primary store, spill file) and
  :mod:`~trio_balancer.ledger.backlog` (what no store takes, retried);
- :mod:`~trio_balancer.ledger.reader`: the running ledger's queries, for /usage.
"""

from trio_balancer.ledger.migrations import MIGRATIONS
from trio_balancer.ledger.reader import LedgerReader
from trio_balancer.ledger.record import GROUP_COLUMNS, Record, parse_time
from trio_balancer.ledger.store import LedgerStore, PostgresStore, SqliteStore, open_store, sqlite_path
from trio_balancer.ledger.writer import Ledger, LedgerUnavailable

__all__ = [
    "GROUP_COLUMNS",
    "MIGRATIONS",
    "Ledger",
    "LedgerReader",
    "LedgerStore",
    "LedgerUnavailable",
    "PostgresStore",
    "Record",
    "SqliteStore",
    "open_store",
    "parse_time",
    "sqlite_path",
]
