"""From a finished request to its ledger record. Pure: the I/O shell calls it and writes.

Every request produces exactly one record: the ones that failed before reaching a provider
(bad JSON, unknown model, too large), the ones every provider refused, the ones the client
abandoned, the ones cut at shutdown, and the ones that succeeded. The record is made in one
place (``BalancerApp._finish_request``), reached from a ``finally`` of the handler and of the
flight, once both have ended (:meth:`RequestContext.claim_record`). Usage is only ever what a provider produced; when it
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

from trio_balancer.errors import BalancerError
from trio_balancer.flight.flight import Flight
from trio_balancer.ledger import Record
from trio_balancer.protocol.pricing import PriceTable

__all__ = [
    "CLIENT_LEFT",
    "CUT",
    "DELIVERED",
    "Delivery",
    "RequestContext",
    "client_identity",
    "fallback_record",
    "new_request_id",
    "request_record",
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


# How a response ended, from the client's side (the ledger's ``outcome``).
DELIVERED = "delivered"  # the whole response reached the client (an error answer too)
CLIENT_LEFT = "client_left"  # the client went away before the end
CUT = "cut"  # the balancer cut it: a lagging listener, a broken body, or shutdown


@attrs.define
class Delivery:
    """What the client got, as far as it went. The handler updates it while it answers, so
    whatever stops the handler (a crash, a cancellation at shutdown) leaves it true."""

    status: int | None = None  # what the client was answered, None while nothing was
    outcome: str = CUT  # until the end is reached or the client is seen leaving


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
    route: str | None = None
    dedup_role: str = "off"
    delivery: Delivery = attrs.Factory(Delivery)
    error: BalancerError | None = None  # answered by the balancer itself, before any flight
    flight: Flight | None = None  # the leader's upstream flight
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
        if self.flight is not None and not self.flight.done.is_set():
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
        duration_ms=ctx.elapsed_ms(),
        dedup_role=ctx.dedup_role,
        disconnected=outcome == CLIENT_LEFT,
        outcome=outcome,
        **fields,
    )


def request_record(ctx: RequestContext, prices: PriceTable) -> Record:
    """The record of a finished request, whichever way it went."""
    if ctx.flight is not None:
        return flight_record(ctx, ctx.flight, prices)
    if ctx.dedup_role in ("follower", "cache"):
        return shared_record(ctx)
    return error_record(ctx)


def fallback_record(ctx: RequestContext) -> Record:
    """When building the real record failed (a bug): what is known for sure, flagged."""
    flight = ctx.flight
    return _record(
        ctx,
        ctx.delivery.status,
        provider=flight.provider if flight is not None else None,
        upstream_model=flight.upstream_model if flight is not None else None,
        error_type="api_error",
        usage_source="estimated" if flight is not None and flight.committed else "none",
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


def flight_record(ctx: RequestContext, flight: Flight, prices: PriceTable) -> Record:
    usage = flight.usage()
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
