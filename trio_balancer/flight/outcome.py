"""What a flight did, as values: one record per attempt, and the frozen outcome of the whole.

A flight is mutable while it runs; what it returns is a :class:`FlightOutcome`, and that is
all the accounting, the status page and the ledger read of it.
"""

from __future__ import annotations

import attrs

from trio_balancer.flight.hub import Item
from trio_balancer.protocol.usage import Usage

__all__ = ["AttemptRecord", "FlightOutcome", "FlightView"]


@attrs.frozen
class AttemptRecord:
    """One try at one provider, for logs, the ledger and the client's final error."""

    provider: str
    model: str
    error: str | None  # None: this attempt served the response
    status: int | None = None
    skipped: bool = False  # never sent: the provider lacks what the request needs (error says what)


@attrs.frozen
class FlightOutcome:
    """How one flight ended.

    ``events`` and ``bytes`` count what was published to listeners (the response body as the
    client gets it, for SSE and JSON alike) by the attempt that served it; what failed
    attempts received before their commit point reached nobody and is not counted.
    """

    provider: str | None  # the provider of the attempt that served (or was last tried)
    upstream_model: str | None
    status: int | None  # the status published to listeners; None if nothing was
    committed: bool
    completed: bool  # the upstream response ended normally (message_stop for SSE)
    sse: bool
    events: int
    bytes: int
    error: str | None  # the Anthropic error type the client saw, if any
    ttfb: float | None  # seconds to the serving provider's response headers
    usage: Usage | None  # what the response used; None when no provider produced one
    usage_unknown: bool = False  # computing the usage failed (a bug): the record is flagged
    tried: tuple[AttemptRecord, ...] = ()
    # The response as listeners got it (head first), when the share policy kept it whole for
    # late listeners and the cache; empty otherwise.
    replay: tuple[Item, ...] = ()


@attrs.frozen
class FlightView:
    """A running flight as the status page shows it."""

    model: str
    provider: str | None
    listeners: int
    events: int
    bytes: int
    committed: bool
