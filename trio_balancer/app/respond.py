"""ASGI types and the two ways we answer outside a flight: a JSON document or an error."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from trio_balancer.errors import JSON_HEADERS, BalancerError, ClientGone, MethodNotAllowed

__all__ = [
    "Message",
    "Receive",
    "Scope",
    "Send",
    "require_method",
    "send_body",
    "send_empty",
    "send_error",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS + (headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_empty(send: Send, status: int) -> None:
    """A response without a body (the answer to ``HEAD``)."""
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_body(
    send: Send, status: int, body: bytes, content_type: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, exc: BalancerError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    if isinstance(exc, ClientGone):
        return
    headers = [(k.encode(), v.encode()) for k, v in exc.headers.items()] + (extra or [])
    await send({"type": "http.response.start", "status": exc.status, "headers": JSON_HEADERS + headers})
    await send({"type": "http.response.body", "body": exc.body(), "more_body": False})


def require_method(method: str, expected: str) -> None:
    """Refuse a request whose method this endpoint does not answer."""
    if method != expected:
        raise MethodNotAllowed(f"method {method} not allowed here; use {expected}")
