"""From a finished request to its ledger record: the request's context and the record builders.

Pure: :class:`~trio_balancer.app.accounting.RecordSink` calls them and writes. Every request
produces exactly one record: the ones that failed before reaching a provider (bad JSON,
unknown model, too large), the ones every provider refused, the ones the client abandoned,
the ones cut at shutdown, and the ones that succeeded. Records are made from values only: the
writer's :class:`Delivery` and the flight's :class:`FlightOutcome`. Usage is only ever what a
provider produced; when it reported none, the estimate says so (``usage_source``), and a
model with no known price gets an empty cost and ``priced = False`` instead of a made-up
number.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from trio_balancer.app.writer import CLIENT_LEFT, Delivery
from trio_balancer.errors import BalancerError
from trio_balancer.flight.outcome import FlightOutcome
from trio_balancer.ledger import Record
from trio_balancer.protocol.pricing import PriceTable

__all__ = [
    "RequestContext",
    "client_identity",
    "error_record",
    "fallback_record",
    "flight_record",
    "new_request_id",
    "request_record",
    "shared_record",
]


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


@attrs.define(eq=False)
class RequestContext:
    """One request from its arrival to its record; exactly one record is made of it.

    The handler owns it. A leader also hands it to its flight, which may end after the
    handler (a shared stream finishing into the cache): whichever of the two ends last makes
    the record (:meth:`claim_record`).
    """

    id: str
    client: str
    path: str
    started_at: float = attrs.Factory(time.time)
    started_perf: float = attrs.Factory(time.perf_counter)
    model: str | None = None
    stream: bool = False
    route: str | None = None  # the route's name or index (x-balancer-route)
    route_why: str | None = None  # the conditions it matched
    dedup_role: str = "off"
    # The client's key has a concurrency limit or a budget: its flight must not outlive its
    # handler (finishing an orphan into the cache would run past both; found by attack).
    bounded: bool = False
    delivery: Delivery = attrs.Factory(Delivery)  # set by the handler when it ends
    error: BalancerError | None = None  # answered by the balancer itself, before any flight
    flight_started: bool = False  # a leader: its flight will end and hand over its outcome
    outcome: FlightOutcome | None = None  # the leader's flight, once ended
    shared_from: tuple[str | None, str | None] = (None, None)  # follower/cache: (provider, model)
    handler_done: bool = False
    recorded: bool = False

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started_perf) * 1000, 3)

    def claim_record(self) -> bool:
        """Claim the right to record this request: True exactly once, for the caller that finds
        the handler and the flight (if any) both ended; it then makes the record."""
        if self.recorded or not self.handler_done:
            return False
        if self.flight_started and self.outcome is None:
            return False
        self.recorded = True
        return True


def _record(ctx: RequestContext, status: int | None, **fields: Any) -> Record:
    """The fields every record takes from its request's context."""
    outcome = ctx.delivery.outcome
    return Record(
        id=ctx.id,
        started_at=ctx.started_at,
        client=ctx.client,
        model=ctx.model,
        path=ctx.path,
        stream=ctx.stream,
        status=status,
        route=ctx.route,
        route_why=ctx.route_why,
        duration_ms=ctx.elapsed_ms(),
        dedup_role=ctx.dedup_role,
        disconnected=outcome == CLIENT_LEFT,
        outcome=outcome,
        **fields,
    )


def request_record(ctx: RequestContext, prices: PriceTable) -> Record:
    """The record of a finished request, whichever way it went."""
    if ctx.outcome is not None:
        if ctx.outcome.usage_unknown:
            return fallback_record(ctx)
        return flight_record(ctx, ctx.outcome, prices)
    if ctx.dedup_role in ("follower", "cache"):
        return shared_record(ctx)
    return error_record(ctx)


def fallback_record(ctx: RequestContext) -> Record:
    """When building the real record failed (a bug): what is known for sure, flagged."""
    outcome = ctx.outcome
    return _record(
        ctx,
        ctx.delivery.status,
        provider=outcome.provider if outcome is not None else None,
        upstream_model=outcome.upstream_model if outcome is not None else None,
        error_type="api_error",
        usage_source="estimated" if outcome is not None and outcome.committed else "none",
        cost_usd=None,
        priced=False,
    )


def error_record(ctx: RequestContext) -> Record:
    """A request that ended before any provider produced anything."""
    error = ctx.error
    status = ctx.delivery.status
    if status is None:
        status = 499 if ctx.delivery.outcome == CLIENT_LEFT else error.status if error else None
    return _record(
        ctx, status, error_type=error.error_type if error is not None else None, usage_source="none"
    )


def flight_record(ctx: RequestContext, flight: FlightOutcome, prices: PriceTable) -> Record:
    usage = flight.usage
    cost: float | None = 0.0
    priced = True
    if usage is not None and flight.upstream_model is not None:
        cost = prices.cost(usage, flight.upstream_model, flight.provider)
        priced = cost is not None
    return _record(
        ctx,
        flight.status if ctx.delivery.status is None else ctx.delivery.status,
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
        attempts=tuple(
            {"provider": a.provider, "model": a.model, "error": a.error, "status": a.status}
            | ({"skipped": True} if a.skipped else {})
            for a in flight.tried
        ),
        events=flight.events,
        bytes=flight.bytes,
    )


def shared_record(ctx: RequestContext) -> Record:
    """A follower of a shared flight or a cache hit: the upstream was billed to the leader."""
    provider, upstream_model = ctx.shared_from
    return _record(
        ctx,
        ctx.delivery.status,
        provider=provider,
        upstream_model=upstream_model,
        usage_source="shared",
        cost_usd=0.0,
    )
