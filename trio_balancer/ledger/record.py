"""A ledger record: what one request cost and how it ended, and its values as any store takes them.

Pure: no database here. The stores write :func:`record_row` and read back with
:func:`plain_value`; both backends share these so a record means the same in either.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

__all__ = [
    "COLUMNS",
    "GROUP_COLUMNS",
    "Record",
    "parse_time",
    "plain_value",
    "record_from_row",
    "record_row",
    "storable",
]

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
    # The route's conditions that matched ("match claude-*; thinking"); ``route`` is its name or index.
    route_why: str | None = None
    # The balancer process that served it (one id per run: ``app/state.new_instance_id``).
    instance: str | None = None

    @property
    def tokens(self) -> int:
        """Every token it used: input, output and cache (what a token budget counts)."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    @property
    def flagged(self) -> bool:
        """Needs a human look: counts estimated, or no price."""
        return self.usage_source in ("partial", "estimated") or not self.priced


# The requests table's columns in Record's order (the table also has ``flagged``, derived).
COLUMNS = [f.name for f in attrs.fields(Record)]


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


# The largest count a column takes (SQLite and PostgreSQL BIGINT are signed 64-bit). A provider
# that reports more tokens than this is lying; the count is kept at the bound, not refused.
_MAX_COUNT = 2**62


def storable(value: Any) -> Any:
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


def record_row(r: Record) -> list[Any]:
    """The values of ``r`` for the requests table: :data:`COLUMNS`, then ``flagged``."""
    values = [storable(getattr(r, name)) for name in COLUMNS]
    attempts = json.dumps(list(r.attempts), ensure_ascii=True)  # ASCII: lone surrogates escaped
    values[COLUMNS.index("attempts")] = attempts.replace("\\u0000", "\\ufffd")
    return [*values, int(r.flagged)]


def plain_value(value: Any) -> Any:
    """Database numbers as plain ints and floats (PostgreSQL sums are Decimal)."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def record_from_row(row: dict[str, Any]) -> Record:
    """A Record again from a row as :meth:`LedgerStore.records` returns it (a spill file drained)."""
    return Record(**{**{k: v for k, v in row.items() if k != "flagged"}, "attempts": tuple(row["attempts"])})
