"""From one listener to one client: the ASGI sends, the disconnect watcher, and the Delivery.

The writer drains a listener in the form the client asked for (a stream, or one JSON body
made from a stream: :mod:`~trio_balancer.protocol.reshape`), and returns a :class:`Delivery`
saying what the client got. Should the writer be stopped before it returns (a bug, shutdown),
:attr:`ResponseWriter.sent_status` still says what was sent, and the request is recorded as
cut.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import attrs
import trio

from trio_balancer.app.respond import Receive, Send, send_error
from trio_balancer.errors import JSON_HEADERS, BalancerError, ClientGone, error_body
from trio_balancer.flight.hub import Abort, Head, Item, Listener, new_listener
from trio_balancer.logging import get_logger
from trio_balancer.protocol.dedup import CachedResponse
from trio_balancer.protocol.events import error_event
from trio_balancer.protocol.reshape import Form, Passthrough, form_for

__all__ = ["CLIENT_LEFT", "CUT", "DELIVERED", "Delivery", "ResponseWriter", "replay"]

log = get_logger("trio_balancer.app.writer")

# A handed-off chunk the client takes longer than this to accept marks it slow: from then on
# its chunks are queued rather than written in the flight's task (see _write_handed_chunk).
SLOW_CLIENT_S = 0.25

# How a response ended, from the client's side (the ledger's ``outcome``).
DELIVERED = "delivered"  # the whole response reached the client (an error answer too)
CLIENT_LEFT = "client_left"  # the client went away before the end
CUT = "cut"  # the balancer cut it: a lagging listener, a broken body, or shutdown


@attrs.frozen
class Delivery:
    """What the client got: the status it was answered (None: nothing) and how it ended."""

    status: int | None = None
    outcome: str = CUT


_Headers = list[tuple[bytes, bytes]]


class ResponseWriter:
    """Answers one client; ``extra`` headers go on whatever it sends (request id, dedup role)."""

    def __init__(self, receive: Receive, send: Send, extra: _Headers) -> None:
        self._receive = receive
        self._send = send
        self.extra = extra
        self.sent_status: int | None = None  # the status sent, as soon as it is
        self.ended: Delivery | None = None  # how the response ended, once it has
        self._form: Form = Passthrough()  # how the body is written, once the head said
        self._hand_off_error: Exception | None = None  # a send that failed in the flight's task
        self._client_slow = False  # a handed chunk took the client over SLOW_CLIENT_S

    def interrupted(self) -> Delivery:
        """What the client got when the writer was stopped (or its caller failed) at any point."""
        return self.ended if self.ended is not None else Delivery(self.sent_status, CUT)

    async def error(self, exc: BalancerError) -> Delivery:
        """Answer ``exc`` if nothing was sent yet; a started response can only be cut, and one
        that already ended (a bug after the end) stays as it ended."""
        if self.ended is not None:
            return self.ended
        if isinstance(exc, ClientGone):
            return Delivery(self.sent_status, CLIENT_LEFT)
        if self.sent_status is not None:
            return Delivery(self.sent_status, CUT)  # returning without the body drops the connection
        self.sent_status = exc.status
        await send_error(self._send, exc, self.extra)
        self.ended = Delivery(exc.status, DELIVERED)
        return self.ended

    async def drain(
        self, listener: Listener, wants_stream: bool, was_dropped: Callable[[Listener], bool] | None = None
    ) -> Delivery:
        """Drain ``listener`` into the client (see :meth:`_drain`); the Delivery is kept."""
        self.ended = await self._drain(listener, wants_stream, was_dropped)
        return self.ended

    async def _drain(
        self, listener: Listener, wants_stream: bool, was_dropped: Callable[[Listener], bool] | None
    ) -> Delivery:
        """Drain ``listener`` into the client, in the form it asked for.

        A watcher turns the client's leaving into a cancellation while the body streams. It is
        stopped before the final send: Hypercorn queues its ``http.disconnect`` as soon as a
        response is complete, while that last ``send`` is still closing or recycling the
        connection, and cancelling it there left HTTP/1.0 and ``Connection: close`` clients
        hanging and keep-alive connections never reaped.

        ``was_dropped`` is asked once the listener ends: if the flight cut this listener off
        for lagging, the end is an error rather than the form's normal end.

        Once the head is sent, body chunks may come by hand-off (:meth:`_write_handed_chunk`),
        written in the flight's task: the watcher's cancellation does not reach those writes;
        a client gone is seen by Hypercorn there, and by the watcher here.
        """
        gone = trio.Event()
        self._form = Passthrough()
        aborted = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, self._receive, nursery.cancel_scope, gone)
                try:
                    async for item in listener:
                        if type(item) is bytes:
                            await self._body(item)
                        elif isinstance(item, Head):
                            self._form = form_for(wants_stream, item.headers)
                            head = self._form.head(item.status, item.headers)
                            if head is not None:
                                await self._start(*head)
                            listener.hand_off_to(partial(self._write_handed_chunk, listener))
                        elif isinstance(item, Abort):
                            log.warning("response.abort", reason=item.reason)
                            aborted = True
                            break
                except trio.ClosedResourceError:
                    if self._hand_off_error is None:
                        raise
                nursery.cancel_scope.cancel()  # stop watching: what follows must not be cancelled
        finally:
            listener.hand_off_to(None)
        if gone.is_set():
            return Delivery(self.sent_status, CLIENT_LEFT)
        if self._hand_off_error is not None:
            raise self._hand_off_error  # a send that failed in the flight's task
        if aborted:
            # Returning without the final body message makes Hypercorn drop the connection, so
            # the client sees a broken response rather than a cut one that looks whole.
            return Delivery(self.sent_status, CUT)
        return await self._end(self._form, dropped=was_dropped is not None and was_dropped(listener))

    async def _body(self, chunk: bytes) -> None:
        out = self._form.chunk(chunk)
        if out:
            await self._send({"type": "http.response.body", "body": out, "more_body": True})

    async def _write_handed_chunk(self, listener: Listener, item: Item) -> bool:
        """A body chunk handed over in the flight's task while this writer waits: written
        there, saving a task switch per event (``ByteQueue.hand_off_to``). Anything else is
        queued, and so is everything once the client has been slow to take a chunk.

        The write is Hypercorn's, shielded until the client takes it (or the stall bound,
        ``hypercorn_fix.SEND_STALL_S``): a client that keeps the flight waiting in it once is
        fed from the queue from then on, where the flight waits for room in a send that its
        deadlines and cancellation can end.

        A send that fails there must not fail the flight: the error is kept for this writer's
        own task to raise, the listener is left, and the flight is told so.
        """
        if type(item) is not bytes or self._client_slow:
            return False
        started = trio.current_time()
        try:
            await self._body(item)
        except Exception as exc:
            if not listener.abandoned:
                self._hand_off_error = exc
                listener.abandon()  # wakes this writer, which raises it
            raise trio.BrokenResourceError("the client's response failed") from exc
        if trio.current_time() - started > SLOW_CLIENT_S:
            self._client_slow = True
        return True

    async def _end(self, form: Form, *, dropped: bool) -> Delivery:
        end_head, tail = _dropped_ending(self.sent_status) if dropped else form.end()
        if end_head is not None:
            await self._start(*end_head)
        elif self.sent_status is None:  # the flight ended without a word: a bug, never a hung client
            log.error("response.empty")
            await self._start(502, list(JSON_HEADERS))
            tail = error_body("api_error", "the balancer produced no response")
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})
        return Delivery(self.sent_status, CUT if dropped else DELIVERED)

    async def _start(self, status: int, headers: _Headers) -> None:
        self.sent_status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers + self.extra})


def _dropped_ending(status: int | None) -> tuple[tuple[int, _Headers] | None, bytes]:
    message = "this client fell too far behind the shared stream and was cut off"
    if status is not None:  # mid-stream: end it with an error event
        return None, error_event("api_error", message)
    return (502, list(JSON_HEADERS)), error_body("api_error", message)


def replay(cached: CachedResponse) -> Listener:
    """A cached response as a listener, ready to drain at full speed (it is in memory already)."""
    listener = new_listener()
    listener.send_nowait(Head(cached.status, cached.headers))
    for chunk in cached.chunks:
        listener.send_nowait(chunk, force=True)
    listener.close()
    return listener


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope, gone: trio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            scope.cancel()
            return
