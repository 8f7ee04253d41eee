"""Two fixes to Hypercorn's trio worker, for connections that end badly.

1. Close a keep-alive connection as soon as its client does.

Hypercorn (0.17, 0.18) starts a keep-alive timer each time an HTTP/1.1 connection goes idle,
as a task of the connection's own nursery. When the client then closes the connection, the
read loop ends, but the connection's nursery still waits for that timer: the socket sits in
CLOSE_WAIT, holding a descriptor, for the whole ``keep_alive_timeout`` (75 s under ``serve``).
Under a client that opens a connection per request (the soak, many SDKs' retries) that is
hundreds of descriptors. Once the peer has closed, nothing can arrive for the timer to wait
for, so we stop it there.

2. Give up on a client that takes nothing. Hypercorn writes to the socket inside a shielded
cancel scope with no deadline, so a client that stops reading (its window closed) holds the
write, its request and its upstream forever, and even the shutdown grace period cannot end it
(a SIGTERM'd balancer with one such client never exited). A write that makes no progress for
``SEND_STALL_S`` now closes the connection: the app sees the client leave, records it, and
cancels its upstream. Once the worker is shutting down, new writes are not shielded at all;
one already in progress keeps its shield (a cut write corrupts a keep-alive connection's
framing) but ends within the stall bound, so a shutdown lasts at most grace + SEND_STALL_S.

``install()`` swaps in a subclass with these changes; it is idempotent and leaves a Hypercorn
without the expected shape alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install"]

_installed = False

# A client whose socket accepts nothing for this long is gone or wedged. Claude Code and the
# SDKs read as the stream comes; a slow reader still makes progress and is never cut.
SEND_STALL_S = 30.0
_SLICE = 64 * 1024


def install() -> None:
    global _installed
    if _installed:
        return
    import hypercorn.trio.run as run
    import trio
    from hypercorn.events import Closed, Event, RawData
    from hypercorn.trio.tcp_server import TCPServer

    if not all(hasattr(TCPServer, name) for name in ("_read_data", "run", "protocol_send")):
        return  # another Hypercorn: nothing we know how to fix

    class ClosingTCPServer(TCPServer):
        async def _read_data(self) -> None:
            await super()._read_data()
            idle_task: Any = getattr(self, "idle_task", None)
            if idle_task is not None:
                await idle_task.stop()  # the peer is gone: its keep-alive timer has nothing to wait for

        async def protocol_send(self, event: Event) -> None:
            if not isinstance(event, RawData):
                await super().protocol_send(event)
                return
            data = memoryview(event.data)
            stalled = False
            async with self.send_lock:
                try:
                    # In slices, each with its own deadline: what is bounded is a stall (no
                    # progress), not how long a slow reader takes over a large body.
                    for start in range(0, max(1, len(data)), _SLICE):
                        with trio.move_on_after(SEND_STALL_S) as write:
                            write.shield = not self.context.terminated.is_set()
                            await self.stream.send_all(data[start : start + _SLICE])
                        if write.cancelled_caught:
                            stalled = True
                            break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())
                    return
            if stalled:  # nothing taken for SEND_STALL_S (or shutting down): the connection ends
                await super().protocol_send(Closed())

    run.TCPServer = ClosingTCPServer  # type: ignore[attr-defined]
    _installed = True
