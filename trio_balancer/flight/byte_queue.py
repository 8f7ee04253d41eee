"""A queue bounded in bytes from a flight (its relay, and a converted stream's pings) to one
listener.

Trio's memory channels count items, and a flight's items are chunks whose size varies from
a 30-byte ping to a 64 KiB read: a buffer of 1,024 chunks let 20 clients that read nothing
drain 8 MB answers each into memory. This queue counts bytes, so a listener that stops
reading stops the flight, the flight stops reading its upstream, and the upstream's TCP
window closes: backpressure end to end, as the streaming spec asks.

One item always fits into an empty queue, whatever its size, so a chunk larger than the
bound cannot wedge the stream; the queue therefore holds at most ``max_bytes`` plus one item.
``send_nowait(force=True)`` ignores the bound: a late listener's replay of what a shared flight
already holds in memory, and the lag a shared flight allows (its own, larger, bound).

Closing follows trio's channels: the producer's ``close()`` lets the consumer drain what is
queued and then get :class:`trio.EndOfChannel`; the consumer's ``abandon()`` makes the next
``send`` raise :class:`trio.BrokenResourceError`.

A hand-off skips the queue: a consumer that sets one (:meth:`hand_off_to`) has
``send(item, hand_off=True)`` call it in the producer's own task whenever the consumer is
parked waiting and nothing is queued. That saves a wake-up of the consumer's task and a
checkpoint of the producer's for every item (for one client of one stream, a task switch per
event: ``bench/RESULTS.md``, issue 20). The hand-off may decline an item (return False): it is
then queued as usual. While one hand-off runs nothing else reaches the consumer: what other
sends queue meanwhile (in the order they come, which is the order of a shared flight's
history) is taken once it is over, so items never overtake each other and the consumer never
runs beside a hand-off.

On that path ``send`` returns once the hand-off has taken the item (for the writer: written
to the client), and yields only if the hand-off does; a cancellation it raises says nothing of
whether the item was taken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

__all__ = ["ByteQueue"]

T = TypeVar("T")


class ByteQueue(Generic[T]):
    """A queue bounded in bytes (``size_of`` each item), not in items; one item always fits."""

    def __init__(self, max_bytes: int, size_of: Callable[[T], int]) -> None:
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._items: deque[tuple[T, int]] = deque()
        self.queued_bytes = 0
        self._closed = False  # the producer is done
        self._abandoned = False  # the consumer left
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._hand_off: Callable[[T], Awaitable[bool]] | None = None
        self._consumer_parked = False  # the consumer waits in receive(): it holds no item
        self._handing_off = False  # a producer is inside the hand-off

    def __len__(self) -> int:
        return len(self._items)

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def has_room(self, size: int, max_bytes: int | None = None, max_items: int | None = None) -> bool:
        """Whether an item of ``size`` bytes fits now (against these bounds, or the queue's own)."""
        if not self._items:
            return True
        if max_items is not None and len(self._items) >= max_items:
            return False
        return self.queued_bytes + size <= (self.max_bytes if max_bytes is None else max_bytes)

    def hand_off_to(self, hand_off: Callable[[T], Awaitable[bool]] | None) -> None:
        """Items sent while the consumer waits go to ``hand_off`` in the producer's task.

        ``hand_off`` returns False to have an item queued instead. An exception it raises
        reaches the producer; it should abandon the queue first if the consumer is done.
        """
        self._hand_off = hand_off

    # -- producer ----------------------------------------------------------------------------

    def send_nowait(self, item: T, *, force: bool = False) -> None:
        """Queue ``item`` now; :class:`trio.WouldBlock` when full, unless ``force``."""
        if self._abandoned:
            raise trio.BrokenResourceError("the listener left")
        if self._closed:
            raise trio.ClosedResourceError("the queue was closed by its producer")
        size = self._size_of(item)
        if not force and not self.has_room(size):
            raise trio.WouldBlock
        self._push(item, size)

    async def send(
        self, item: T, *, max_bytes: int | None = None, max_items: int | None = None, hand_off: bool = False
    ) -> None:
        """Queue ``item``, waiting while the queue is full (against these bounds, or its own);
        with ``hand_off``, give it to the consumer's hand-off instead when it can take it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        size = self._size_of(item)
        while True:
            if self._abandoned:
                raise trio.BrokenResourceError("the listener left")
            if self._closed:
                raise trio.ClosedResourceError("the queue was closed by its producer")
            if (
                hand_off
                and not self._handing_off
                and self._hand_off is not None
                and self._consumer_parked
                and not self._items
            ):
                if await self._handed_off(self._hand_off, item):
                    return
                hand_off = False  # declined: checked again, then queued
                continue
            elif self.has_room(size, max_bytes, max_items):
                break
            await self._writable.park()
        self._push(item, size)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _handed_off(self, hand_off: Callable[[T], Awaitable[bool]], item: T) -> bool:
        self._handing_off = True
        try:
            taken = await hand_off(item)
        finally:
            self._handing_off = False
            self._writable.unpark_all()
            if self._items or self._closed or self._abandoned:
                self._wake_consumer()  # what came meanwhile is the consumer's now
        return taken

    def _push(self, item: T, size: int) -> None:
        self._items.append((item, size))
        self.queued_bytes += size
        if not self._handing_off:  # else the consumer is woken when the hand-off is over
            self._wake_consumer()

    def _wake_consumer(self) -> None:
        self._consumer_parked = False  # woken, it is no longer a consumer to hand off to
        self._readable.unpark_all()

    def close(self) -> None:
        """No more items; the consumer gets what is queued, then the end."""
        self._closed = True
        if not self._handing_off:
            self._wake_consumer()

    # -- consumer ----------------------------------------------------------------------------

    def receive_nowait(self) -> T:
        if self._handing_off:
            raise trio.WouldBlock  # the producer is giving an item to this consumer's hand-off
        if self._items:
            item, size = self._items.popleft()
            self.queued_bytes -= size
            self._writable.unpark_all()
            return item
        if self._abandoned:
            raise trio.ClosedResourceError("this listener already left")
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                item = self.receive_nowait()
                break
            except trio.WouldBlock:
                self._consumer_parked = True
                try:
                    await self._readable.park()
                finally:
                    self._consumer_parked = False
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def abandon(self) -> None:
        """The consumer leaves: what is queued is dropped, the producer's next send fails."""
        self._abandoned = True
        self._items.clear()
        self.queued_bytes = 0
        self._writable.unpark_all()
        self._wake_consumer()

    def __aiter__(self) -> ByteQueue[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
