"""One request's upstream lifetime, fanned out to the listeners that want it.

A flight runs in the app's nursery, not in the handler of the request that started it, so a
stream can outlive the client that asked for it while others still listen. Each listener gets
its own bounded memory channel; the flight's only task reads the upstream, decodes SSE
incrementally (sans-I/O, inline: a second task and channel hop per event would cost more than
the decoding itself) and publishes what is complete. The last listener leaving cancels the
flight, which closes the upstream response and releases its connection at once.

What a listener receives: exactly one :class:`Head`, then body chunks (``bytes``), then the
channel ends. An :class:`Abort` in place of the end means the body is broken and the client's
connection must be dropped rather than ended cleanly (a cut JSON body).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, cast

import attrs
import httpx
import trio

from .config import ProviderConfig
from .errors import (
    BalancerError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
    error_type_for_status,
)
from .logging import get_logger
from .routing import Attempt
from .sse import EventTooLarge, MalformedEventData, SSEDecoder, SSEEvent
from .upstream import request_headers, response_headers, upstream_url

__all__ = ["LISTENER_BUFFER", "Abort", "Flight", "Head", "Item", "UpstreamRequest"]

log = get_logger("trio_balancer.flight")

# Items a listener may lag behind before the flight waits for it. With one listener this is
# plain backpressure; it only needs to absorb scheduling jitter, not whole responses.
LISTENER_BUFFER = 64
# An error body from a provider is read whole before it is relayed; this bounds it.
MAX_ERROR_BODY = 256 * 1024
# Slide the idle deadline at most this often: moving a cancel scope deadline re-sorts trio's
# deadline heap, so it is not free per event, and a second of slack on a 300 s bound is noise.
_IDLE_SLIDE_S = 1.0

JSON_HEADERS = [(b"content-type", b"application/json")]


@attrs.frozen
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]


@attrs.frozen
class Abort:
    reason: str


Item = Head | bytes | Abort


@attrs.frozen
class UpstreamRequest:
    """What the client asked for, ready to be sent to any provider."""

    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    payload: Mapping[str, Any]
    model: str
    stream: bool

    def body_for(self, model: str) -> bytes:
        """The body to send upstream: the client's own bytes unless the model is renamed."""
        if model == self.model:
            return self.body
        return json.dumps({**self.payload, "model": model}, ensure_ascii=False).encode()


class Flight:
    def __init__(
        self,
        request: UpstreamRequest,
        attempts: list[Attempt],
        clients: Mapping[str, httpx.AsyncClient],
    ) -> None:
        self.request = request
        self.attempts = attempts
        self._clients = clients
        self._listeners: dict[trio.MemoryReceiveChannel[Item], trio.MemorySendChannel[Item]] = {}
        self.cancel_scope = trio.CancelScope()
        self.done = trio.Event()
        # What happened, for logs, metrics and tests.
        self.provider: str | None = None
        self.status: int | None = None
        self.committed = False
        self.completed = False  # the upstream response ended normally (message_stop for SSE)
        self.events = 0
        self.bytes = 0
        self.error: str | None = None

    # -- listeners ---------------------------------------------------------------------------

    def subscribe(self) -> trio.MemoryReceiveChannel[Item]:
        send, recv = trio.open_memory_channel[Item](LISTENER_BUFFER)
        self._listeners[recv] = send
        return recv

    def unsubscribe(self, recv: trio.MemoryReceiveChannel[Item]) -> None:
        """A listener leaves; the last one leaving before the end cancels the flight."""
        recv.close()
        send = self._listeners.pop(recv, None)
        if send is not None:
            send.close()
        if not self._listeners and not self.done.is_set():
            self.cancel_scope.cancel()

    async def _publish(self, item: Item) -> None:
        if len(self._listeners) == 1:  # the common case, without a copy of the dict
            ((recv, send),) = self._listeners.items()
            try:
                await send.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(recv)
            return
        for recv, send in list(self._listeners.items()):
            try:
                await send.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(recv)
        if not self._listeners:
            self.cancel_scope.cancel()

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            with self.cancel_scope:
                try:
                    await self._serve()
                except BalancerError as exc:
                    await self._fail(exc)
                except Exception:  # a bug of ours: answer the client, keep the app alive
                    log.exception("flight.crash", provider=self.provider)
                    await self._fail(UpstreamError("internal error in the balancer"))
        finally:
            for send in self._listeners.values():
                send.close()
            self.done.set()

    async def _fail(self, exc: BalancerError) -> None:
        self.error = exc.error_type
        if not self.committed:
            self.status = exc.status
            headers = JSON_HEADERS + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            await self._publish(Head(exc.status, headers))
            await self._publish(exc.body())
        elif self._sse:
            await self._publish(exc.event())
        else:
            await self._publish(Abort(exc.message))

    async def _serve(self) -> None:
        # Failover across attempts comes with health tracking; for now the first target serves.
        await self._try(self.attempts[0])

    async def _try(self, attempt: Attempt) -> None:
        provider = attempt.provider
        self.provider = provider.name
        req = self.request
        client = self._clients[provider.name]
        t = provider.timeouts
        total = trio.CancelScope(deadline=_deadline(t.total))
        phase = trio.CancelScope(deadline=_deadline(t.first_byte))
        in_body = False
        with total:
            with phase:
                try:
                    async with client.stream(
                        "POST",
                        upstream_url(provider, req.path, req.query),
                        headers=request_headers(req.headers, provider),
                        content=req.body_for(attempt.model),
                    ) as response:
                        phase.deadline = trio.current_time() + t.idle
                        in_body = True
                        await self._relay(provider, response, phase, t.idle)
                except httpx.TimeoutException as exc:
                    raise UpstreamTimeout(f"provider {provider.name!r}: {_describe(exc)}") from None
                except httpx.TransportError as exc:
                    raise UpstreamUnavailable(f"provider {provider.name!r}: {_describe(exc)}") from None
            if phase.cancelled_caught:
                what = "idle for" if in_body else "no response headers within"
                limit = t.idle if in_body else t.first_byte
                raise UpstreamTimeout(f"provider {provider.name!r}: {what} {limit:g} s")
        if total.cancelled_caught:
            raise UpstreamTimeout(f"provider {provider.name!r}: response not complete within {t.total:g} s")

    # -- relaying ----------------------------------------------------------------------------

    _sse = False

    async def _relay(
        self, provider: ProviderConfig, response: httpx.Response, idle: trio.CancelScope, idle_s: float
    ) -> None:
        self.status = response.status_code
        encoding = response.headers.get("content-encoding", "identity").lower()
        decoded = encoding not in ("identity", "")
        headers = response_headers(response.headers.raw, decoded_body=decoded)
        if response.status_code != 200:
            await self._relay_error(provider, response, headers)
            return
        self._sse = response.headers.get("content-type", "").startswith("text/event-stream")
        self.committed = True
        await self._publish(Head(200, headers))
        # aclosing: a cancelled flight must close the generator (and the response) right here,
        # not when the garbage collector finds it.
        # (httpx annotates these as AsyncIterator; they are async generators.)
        body = cast(AsyncGenerator[bytes, None], response.aiter_bytes() if decoded else response.aiter_raw())
        async with aclosing(body) as chunks:
            if self._sse:
                await self._relay_sse(provider, chunks, idle, idle_s)
            else:
                async for chunk in chunks:
                    self.bytes += len(chunk)
                    await self._publish(chunk)
                self.completed = True

    async def _relay_sse(
        self,
        provider: ProviderConfig,
        chunks: AsyncGenerator[bytes, None],
        idle: trio.CancelScope,
        idle_s: float,
    ) -> None:
        decoder = SSEDecoder()
        slid_at = trio.current_time()
        saw_stop = False
        async for chunk in chunks:
            now = trio.current_time()
            if now - slid_at > _IDLE_SLIDE_S:
                idle.deadline = now + idle_s
                slid_at = now
            try:
                events = decoder.feed(chunk)
            except EventTooLarge as exc:
                raise UpstreamError(f"provider {provider.name!r}: {exc}") from None
            if not events:
                continue
            for event in events:
                if event.event == "message_stop":
                    saw_stop = True
                elif event.data is not None:
                    _check_shape(provider, event)
            self.events += len(events)
            out = events[0].raw if len(events) == 1 else b"".join(e.raw for e in events)
            self.bytes += len(out)
            await self._publish(out)
        tail = decoder.close()
        if tail is not None:
            # The provider ended without a blank line after its last event. Most SSE clients
            # drop such an event, so we end it for them: the one change we make to the bytes.
            self.events += 1
            if tail.event == "message_stop":
                saw_stop = True
            end = b"\n" if tail.raw.endswith((b"\n", b"\r")) else b"\n\n"
            await self._publish(tail.raw + end)
        if not saw_stop:
            raise UpstreamError(f"provider {provider.name!r}: stream ended before message_stop")
        self.completed = True

    async def _relay_error(
        self, provider: ProviderConfig, response: httpx.Response, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Relay a provider's error status with its body, in Anthropic's shape."""
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_ERROR_BODY:
                break
        status = response.status_code
        out = bytes(body)
        if not _is_anthropic_error(out):
            excerpt = out[:300].decode("utf-8", "replace").strip()
            message = f"provider {provider.name!r} answered HTTP {status}" + (
                f": {excerpt}" if excerpt else ""
            )
            out = error_body(error_type_for_status(status), message)
            headers = [(n, v) for n, v in headers if n != b"content-type"] + JSON_HEADERS
        self.error = error_type_for_status(status)
        log.info("upstream.error_status", provider=provider.name, status=status)
        self.committed = True
        await self._publish(Head(status, headers))
        await self._publish(out)


def _deadline(seconds: float | None) -> float:
    return math.inf if seconds is None else trio.current_time() + seconds


def _describe(exc: httpx.HTTPError) -> str:
    # The class name says what failed; httpx messages can carry URLs, so they stay out.
    return {
        "ConnectError": "connection failed",
        "ConnectTimeout": "connect timeout",
        "PoolTimeout": "no free connection in the pool",
        "ReadTimeout": "read timeout",
        "WriteTimeout": "write timeout",
        "RemoteProtocolError": "connection closed or protocol error",
        "ReadError": "connection broken while reading",
        "WriteError": "connection broken while writing",
    }.get(type(exc).__name__, type(exc).__name__)


def _is_anthropic_error(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(parsed, dict) and parsed.get("type") == "error" and isinstance(parsed.get("error"), dict)
    )


def _check_shape(provider: ProviderConfig, event: SSEEvent) -> None:
    """Cheap structural check of every data payload: JSON objects start and end with braces.

    A full parse of every event would cost more than the rest of the relay; this catches
    truncated and non-JSON payloads, which are what broken upstreams actually send. Events we
    parse anyway (usage, errors) get the full check where they are parsed.
    """
    data = event.data
    if data and data[0] == 0x7B and data.rstrip()[-1:] == b"}":
        return
    try:
        event.json()
    except MalformedEventData as exc:
        log.warning("upstream.malformed_event", provider=provider.name, problem=str(exc))
