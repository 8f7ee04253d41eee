"""From a finished request to its ledger record. Pure: the I/O shell calls it and writes.

Every request produces exactly one record: the ones that failed before reaching a provider
(bad JSON, unknown model, too large), the ones every provider refused, the ones the client
abandoned, and the ones that succeeded. Usage is only ever what a provider produced; when it
reported none, the estimate says so (``usage_source``), and a model with no known price gets
an empty cost and ``priced = False`` instead of a made-up number.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from .errors import BalancerError
from .flight import Flight
from .ledger import Record
from .pricing import PriceTable

__all__ = ["RequestContext", "client_identity", "error_record", "flight_record", "new_request_id"]


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def client_identity(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """Who is asking, without keeping their secret: a short hash of the credential they sent.

    Two requests with the same key get the same identity (dedup and per-client totals need
    that); the key itself cannot be recovered from it.
    """
    for name, value in headers:
        if name in (b"x-api-key", b"authorization"):
            secret = value.removeprefix(b"Bearer ").removeprefix(b"bearer ").strip()
            if secret:
                return "key-" + hashlib.sha256(secret).hexdigest()[:12]
    return "anonymous"


@attrs.define
class RequestContext:
    id: str
    client: str
    path: str
    started_at: float = attrs.Factory(time.time)
    started_perf: float = attrs.Factory(time.perf_counter)
    model: str | None = None
    stream: bool = False
    route: str | None = None
    dedup_role: str = "off"

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started_perf) * 1000, 3)


def _record(ctx: RequestContext, status: int | None, **fields: Any) -> Record:
    """The fields every record takes from its request's context."""
    return Record(
        id=ctx.id,
        started_at=ctx.started_at,
        client=ctx.client,
        model=ctx.model,
        path=ctx.path,
        stream=ctx.stream,
        status=status,
        route=ctx.route,
        duration_ms=ctx.elapsed_ms(),
        dedup_role=ctx.dedup_role,
        **fields,
    )


def error_record(ctx: RequestContext, error: BalancerError | None, status: int) -> Record:
    """A request that ended before any provider produced anything."""
    return _record(
        ctx, status, error_type=error.error_type if error is not None else None, usage_source="none"
    )


def flight_record(ctx: RequestContext, flight: Flight, prices: PriceTable, *, disconnected: bool) -> Record:
    usage = flight.usage()
    cost: float | None = 0.0
    priced = True
    if usage is not None and flight.upstream_model is not None:
        cost = prices.cost(usage, flight.upstream_model, flight.provider)
        priced = cost is not None
    return _record(
        ctx,
        flight.status,
        provider=flight.provider,
        upstream_model=flight.upstream_model,
        error_type=flight.error,
        ttfb_ms=None if flight.ttfb is None else round(flight.ttfb * 1000, 3),
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else 0,
        cache_read_input_tokens=usage.cache_read_input_tokens if usage else 0,
        usage_source=usage.source if usage else "none",
        cost_usd=cost,
        priced=priced,
        disconnected=disconnected,
        attempts=tuple(
            {"provider": a.provider, "model": a.model, "error": a.error, "status": a.status}
            for a in flight.tried
        ),
        events=flight.events,
        bytes=flight.bytes,
    )


def shared_record(
    ctx: RequestContext,
    status: int | None,
    provider: str | None,
    upstream_model: str | None,
    *,
    disconnected: bool,
) -> Record:
    """A follower of a shared flight or a cache hit: the upstream was billed to the leader."""
    return _record(
        ctx,
        status,
        provider=provider,
        upstream_model=upstream_model,
        usage_source="shared",
        cost_usd=0.0,
        disconnected=disconnected,
    )
