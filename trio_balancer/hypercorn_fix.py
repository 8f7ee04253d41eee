"""One fix to Hypercorn's trio worker: close a keep-alive connection as soon as its client does.

Hypercorn (0.17, 0.18) starts a keep-alive timer each time an HTTP/1.1 connection goes idle,
as a task of the connection's own nursery. When the client then closes the connection, the
read loop ends, but the connection's nursery still waits for that timer: the socket sits in
CLOSE_WAIT, holding a descriptor, for the whole ``keep_alive_timeout`` (75 s under ``serve``).
Under a client that opens a connection per request (the soak, many SDKs' retries) that is
hundreds of descriptors. Once the peer has closed, nothing can arrive for the timer to wait
for, so we stop it there. ``install()`` swaps in a subclass with that one change; it is
idempotent and leaves a Hypercorn without the expected shape alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install"]

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    import hypercorn.trio.run as run
    from hypercorn.trio.tcp_server import TCPServer

    if not (hasattr(TCPServer, "_read_data") and hasattr(TCPServer, "run")):
        return  # another Hypercorn: nothing we know how to fix

    class ClosingTCPServer(TCPServer):
        async def _read_data(self) -> None:
            await super()._read_data()
            idle_task: Any = getattr(self, "idle_task", None)
            if idle_task is not None:
                await idle_task.stop()  # the peer is gone: its keep-alive timer has nothing to wait for

    run.TCPServer = ClosingTCPServer  # type: ignore[attr-defined]
    _installed = True
