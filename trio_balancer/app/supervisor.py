"""The flights' owner: the nursery they run in, the live and shared maps, and "idle".

A flight runs here rather than in its request's handler, so a shared stream can outlive the
client that started it. Nothing a flight raises reaches the nursery (one bad response must
not stop the app); when a flight ends, the supervisor takes it out of the maps, hands its
outcome to whoever asked (the cache, sticky sessions) and to its request's record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import attrs
import trio

from trio_balancer.app.accounting import RecordSink
from trio_balancer.app.records import RequestContext
from trio_balancer.flight.flight import Flight
from trio_balancer.flight.outcome import FlightOutcome
from trio_balancer.logging import get_logger
from trio_balancer.upstream.request import UpstreamRequest

__all__ = ["FlightSupervisor", "count_tasks"]

log = get_logger("trio_balancer.app.supervisor")

FlightEnded = Callable[[UpstreamRequest, FlightOutcome, str | None], None]


class FlightSupervisor:
    """Owns the running flights; ``flight_ended(request, outcome, key)`` runs as each ends."""

    def __init__(self, sink: RecordSink, flight_ended: FlightEnded, on_count: Callable[[int], None]) -> None:
        self._sink = sink
        self._flight_ended = flight_ended
        self._on_count = on_count  # the number of live flights changed (a gauge)
        self.nursery: trio.Nursery | None = None  # inside running()
        self.flights: set[Flight] = set()  # live flights, for shutdown, status and tests
        self.shared: dict[str, Flight] = {}  # signature -> live flight others may join
        self._handlers = 0  # /v1/messages handlers not yet recorded
        self._idle = trio.Event()
        self._idle.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """Flights may start while inside; leaving cancels those still running and waits for
        them to end (each records its request on the way out).

        The nursery is also where the app's other request-time tasks run (the SIGHUP reload
        listener, closing retired providers): they live exactly as long as serving does.
        """
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    yield nursery
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.nursery = None  # however it ended: no flight may start in a closed nursery

    @property
    def serving(self) -> bool:
        return self.nursery is not None

    def task_count(self) -> int:
        """Tasks the app owns right now (flights, their children, housekeeping)."""
        return 0 if self.nursery is None else count_tasks(self.nursery.child_tasks)

    # -- idle --------------------------------------------------------------------------------

    def handler_started(self) -> None:
        self._handlers += 1
        self._update_idle()

    def handler_recorded(self) -> None:
        self._handlers -= 1
        self._update_idle()

    def _update_idle(self) -> None:
        if self.flights or self._handlers:
            if self._idle.is_set():
                self._idle = trio.Event()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no flight is running and every request handled so far is recorded."""
        while not self._idle.is_set():
            await self._idle.wait()

    # -- flights -----------------------------------------------------------------------------

    def joinable(self, key: str) -> Flight | None:
        """The live flight of this signature, if a late listener can still get all of it."""
        flight = self.shared.get(key)
        return flight if flight is not None and flight.joinable else None

    def start(self, flight: Flight, ctx: RequestContext, key: str | None) -> None:
        """Run ``flight`` for ``ctx``; from here on it will end and record, whatever happens."""
        assert self.nursery is not None
        self.nursery.start_soon(self._run, flight, ctx, key)
        ctx.flight_started = True
        if key is not None:
            self.shared[key] = flight
        self.flights.add(flight)
        self._on_count(len(self.flights))
        self._update_idle()

    async def _run(self, flight: Flight, ctx: RequestContext, key: str | None) -> None:
        """The flight's task in the app nursery: nothing it raises may reach that nursery."""
        outcome: FlightOutcome | None = None
        crashed = False
        try:
            outcome = await flight.run()
        except Exception:  # Flight.run answers its own errors; this is a bug in that answer
            log.exception("flight.crash", request_id=ctx.id, provider=flight.provider)
            crashed = True
        finally:
            with trio.CancelScope(shield=True):
                if outcome is None:  # raised or cancelled: what run's own finally concluded
                    assert flight.outcome is not None
                    outcome = flight.outcome
                if crashed:
                    outcome = attrs.evolve(outcome, error=outcome.error or "api_error")
                self._ended(flight, outcome, ctx, key)
                ctx.outcome = outcome
                await self._sink.finish(ctx)

    def _ended(self, flight: Flight, outcome: FlightOutcome, ctx: RequestContext, key: str | None) -> None:
        """Bookkeeping when a flight ends: the maps first (cannot fail), then what might."""
        self.flights.discard(flight)
        if key is not None and self.shared.get(key) is flight:
            del self.shared[key]
        self._update_idle()
        try:
            self._on_count(len(self.flights))
            self._flight_ended(flight.request, outcome, key)
        except Exception:
            log.exception("flight.bookkeeping_failed", request_id=ctx.id)


def count_tasks(tasks: Iterable[trio.lowlevel.Task]) -> int:
    """``tasks`` and every task below them, through their nurseries."""
    stack = list(tasks)
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count
