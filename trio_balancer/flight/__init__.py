"""One request's upstream lifetime: the failover loop, the relay and the fan-out to listeners.

May import base, protocol, config, policy, upstream; never the app, which owns flights.
"""

from trio_balancer.flight.counting import CountFlight
from trio_balancer.flight.flight import Flight, FlightObserver
from trio_balancer.flight.hub import (
    LISTENER_BUFFER_BYTES,
    Abort,
    Head,
    Item,
    Listener,
    SharePolicy,
    item_size,
)
from trio_balancer.flight.outcome import AttemptRecord, FlightOutcome, FlightView
from trio_balancer.upstream.request import UpstreamRequest

__all__ = [
    "LISTENER_BUFFER_BYTES",
    "Abort",
    "AttemptRecord",
    "CountFlight",
    "Flight",
    "FlightObserver",
    "FlightOutcome",
    "FlightView",
    "Head",
    "Item",
    "Listener",
    "SharePolicy",
    "UpstreamRequest",
    "item_size",
]
