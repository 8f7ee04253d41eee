"""The fan-out of one response to its listeners: queues bounded in bytes, history, lag bounds.

What a listener receives: exactly one :class:`Head`, then body chunks (``bytes``), then the
queue ends. An :class:`Abort` in place of the end means the body is broken and the client's
connection must be dropped rather than ended cleanly (a cut JSON body).

With one listener the hub is plain backpressure: its queue only absorbs scheduling jitter,
never a response, so a client that stops reading stops the flight, and the flight stops
reading its upstream. While that listener's writer waits, a chunk skips the queue and is
written to the client in the flight's task (``ByteQueue.hand_off_to``): one task switch less
per event. With several (identical requests sharing one upstream stream) nobody
waits for a slow one until it is past the lag bounds; one that stays past them is cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from trio_balancer.config import DedupConfig
from trio_balancer.flight.byte_queue import ByteQueue
from trio_balancer.logging import get_logger

__all__ = [
    "LISTENER_BUFFER_BYTES",
    "Abort",
    "Head",
    "Hub",
    "Item",
    "Listener",
    "SharePolicy",
    "item_size",
    "new_listener",
]

log = get_logger("trio_balancer.flight.hub")

# Bytes queued for one listener before the flight waits for it: enough to absorb scheduling
# jitter, far less than a response.
LISTENER_BUFFER_BYTES = 64 * 1024
# What a head or an abort counts for in a listener's byte bound.
_MARKER_BYTES = 64


@attrs.frozen
class Head:
    """The response's status and headers: the first item every listener gets."""

    status: int
    headers: list[tuple[bytes, bytes]]


@attrs.frozen
class Abort:
    """In place of the end: the body is broken, the client's connection must be dropped."""

    reason: str


Item = Head | bytes | Abort
Listener = ByteQueue[Item]


def item_size(item: Item) -> int:
    """An item's weight in a listener's byte bound: its length for a chunk."""
    if type(item) is bytes:
        return len(item)
    if isinstance(item, Head):
        return _MARKER_BYTES + sum(len(n) + len(v) for n, v in item.headers)
    return _MARKER_BYTES


def new_listener() -> Listener:
    """An empty listener queue, bounded at :data:`LISTENER_BUFFER_BYTES`."""
    return ByteQueue(LISTENER_BUFFER_BYTES, item_size)


def _dedup_default(name: str) -> Any:
    """The ``[dedup]`` key's default: the config schema says it once."""
    return attrs.fields_dict(DedupConfig)[name].default


@attrs.frozen
class SharePolicy:
    """How a flight treats several listeners (dedup); without keep_history, one listener's.

    The lag bounds and the history bound are the ``[dedup]`` keys of the same names.
    """

    keep_history: bool = False  # replay for late joiners and the cache
    # With several listeners, how far one may fall behind the flight (events and bytes queued
    # for it) before the flight waits for it, and how long it waits before cutting it off.
    max_lag_events: int = _dedup_default("max_lag_events")
    max_lag_bytes: int = _dedup_default("max_lag_bytes")
    max_lag_s: float = _dedup_default("max_lag_s")
    finish_orphans: bool = False  # keep streaming into the cache after the last listener left
    # A response whose history passes this is no longer shared with late joiners nor cached,
    # and its history is let go: a shared flight never holds more than this for replay.
    max_shared_bytes: int = _dedup_default("max_shared_bytes")

    @classmethod
    def for_dedup(cls, dedup: DedupConfig, *, shared: bool, orphans: bool = True) -> SharePolicy:
        """The policy of a flight others may join (``shared``) under ``[dedup]``; ``orphans``
        False: it never finishes once its listeners left, whatever ``finish_orphans`` says."""
        return cls(
            keep_history=shared,
            max_lag_events=dedup.max_lag_events,
            max_lag_bytes=dedup.max_lag_bytes,
            max_lag_s=dedup.max_lag_s,
            finish_orphans=dedup.finish_orphans and shared and orphans,
            max_shared_bytes=dedup.max_shared_bytes,
        )


class Hub:
    """One response's listeners. ``deserted`` is called when the last one leaves early (the
    flight cancels itself then, unless the policy says to finish into the cache)."""

    def __init__(self, share: SharePolicy, deserted: Callable[[], None]) -> None:
        self.share = share
        self._deserted = deserted
        self._listeners: list[Listener] = []
        self._dropped: set[Listener] = set()
        self.history: list[Item] = []
        self._history_bytes = 0
        self._history_dropped = False
        self.closed = False

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def joinable(self) -> bool:
        """A late listener can still get the whole response (the history is complete)."""
        return self.share.keep_history and not self._history_dropped and not self.closed

    def subscribe(self) -> Listener:
        """A new listener; a late one first gets everything published so far, in order.

        The replay and the registration happen without a checkpoint in between, so the
        listener sees every item exactly once whatever the flight does meanwhile. The replay
        is already in memory (the history), so it goes in past the queue's bound.
        """
        listener = new_listener()
        for item in self.history:
            listener.send_nowait(item, force=True)
        if self.closed:
            listener.close()
        else:
            self._listeners.append(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        """A listener leaves; the last one leaving before the end deserts the flight."""
        listener.abandon()
        if listener in self._listeners:
            self._listeners.remove(listener)
        self._check_deserted()

    def was_dropped(self, listener: Listener) -> bool:
        """This listener fell further behind than the bounds allow and was cut off."""
        return listener in self._dropped

    def close(self) -> None:
        """The response is over: every listener's queue ends after what it holds."""
        self.closed = True
        for listener in self._listeners:
            listener.close()

    def _check_deserted(self) -> None:
        if not self._listeners and not self.closed and not self.share.finish_orphans:
            self._deserted()

    def _keep(self, item: Item) -> None:
        """Remember ``item`` for late listeners and the cache, up to the history bound."""
        if self._history_dropped:
            return
        self._history_bytes += item_size(item)
        if self._history_bytes > self.share.max_shared_bytes:
            # Too large to share or cache: let the memory go; later requests get their own flight.
            self._history_dropped = True
            self.history = []
            return
        self.history.append(item)

    async def publish(self, item: Item) -> None:
        if self.share.keep_history:
            self._keep(item)
        listeners = self._listeners
        if len(listeners) == 1:  # one listener: plain backpressure, nobody else to protect
            listener = listeners[0]
            try:
                await listener.send(item, hand_off=True)  # to its client at once, if it waits
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(listener)
            return
        # Several: nobody waits for a slow one until it is past the lag bounds.
        share = self.share
        size = item_size(item)
        slow = []
        for listener in list(listeners):
            if listener.abandoned:
                self.unsubscribe(listener)
            elif listener.has_room(size, share.max_lag_bytes, share.max_lag_events):
                listener.send_nowait(item, force=True)
            else:
                slow.append(listener)
        if slow:
            await self._wait_for_slow(slow, item)

    async def _wait_for_slow(self, slow: list[Listener], item: Item) -> None:
        """Give listeners past the lag bounds ``max_lag_s`` to catch up, then cut them off."""
        share = self.share
        with trio.move_on_after(share.max_lag_s):
            while slow:
                listener = slow[0]
                try:
                    await listener.send(item, max_bytes=share.max_lag_bytes, max_items=share.max_lag_events)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.unsubscribe(listener)
                slow.pop(0)
        for listener in slow:
            self._dropped.add(listener)
            if listener in self._listeners:
                self._listeners.remove(listener)
            listener.close()
            log.warning(
                "listener.dropped",
                lag_events=len(listener),
                lag_bytes=listener.queued_bytes,
                lag_s=share.max_lag_s,
            )
        self._check_deserted()
