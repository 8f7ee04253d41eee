"""Drive the ASGI app in memory, for checks that are not about streaming timing.

Not ``httpx.ASGITransport``: that one joins whole bodies, which is fine here only because
these callers look at complete responses, and this driver also lets a test choose the client
address (``scope["client"]``), which a real socket on 127.0.0.1 cannot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trio_balancer.app.asgi import BalancerApp

__all__ = ["call", "running"]


@asynccontextmanager
async def running(app: BalancerApp) -> AsyncIterator[BalancerApp]:
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](10)
    to_server, from_app = trio.open_memory_channel[dict[str, Any]](10)
    async with trio.open_nursery() as n:
        n.start_soon(app, {"type": "lifespan"}, from_server.receive, to_server.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        yield app
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


async def call(
    app: BalancerApp,
    method: str,
    path: str,
    *,
    client: tuple[str, int],
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
) -> tuple[int, bytes]:
    if body and not any(n == b"content-type" for n, _ in headers):
        headers = (*headers, (b"content-type", b"application/json"))  # as every API client sends
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers,
        "client": client,
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, f"expected one response start, got {len(starts)}"
    return starts[0]["status"], b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
