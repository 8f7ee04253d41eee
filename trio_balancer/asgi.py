"""The ASGI application: the only module that speaks raw ASGI.

The lifespan task owns the app: the providers' HTTP clients and the nursery flights run in.
A request handler owns a small nursery of its own: a watcher that turns ``http.disconnect``
into a cancellation (Hypercorn does not cancel the app when a client leaves) and the writer
that drains its listener channel into the socket.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import structlog
import trio

from . import admin
from . import logging as blog
from .accounting import RequestContext, client_identity, error_record, flight_record, new_request_id
from .config import Config, ConfigError, load_config
from .errors import BalancerError, ClientGone, InvalidRequest, NotFound, RequestTooLarge
from .flight import Abort, Flight, Head, Item, UpstreamRequest
from .ledger import Ledger, Record, sqlite_path
from .pricing import PriceTable
from .providers import Registry
from .respond import JSON_HEADERS, Receive, Scope, Send, send_error, send_json
from .routing import Router, listed_models
from .usage import ESTIMATED, PARTIAL

__all__ = ["CONFIG_ENV", "BalancerApp", "create_app"]

CONFIG_ENV = "TRIO_BALANCER_CONFIG"


log = blog.get_logger("trio_balancer.asgi")

# Each model in GET /v1/models gets this creation date: the config does not know the real one
# and clients only display it.
_MODELS_EPOCH = "2025-01-01T00:00:00Z"


class BalancerApp:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry: Registry | None = None
        self.ledger: Ledger | None = None
        self.prices = PriceTable(config.prices)
        self.router = Router(config)
        self.flights: set[Flight] = set()  # live flights, for shutdown, status and tests
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no flight is running."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websocket: not ours; returning closes it

    # -- lifespan ----------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            self.registry = Registry(self.config)
            async with trio.open_nursery() as services:
                if self.config.ledger.enabled:
                    self.ledger = Ledger(sqlite_path(self.config.ledger.url))
                    await services.start(self.ledger.run)
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._reload_on_sighup)
                        log.info(
                            "balancer.start",
                            config=self.config.source,
                            providers=[p.name for p in self.config.providers],
                            ledger=self.ledger.path if self.ledger else None,
                        )
                        await send({"type": "lifespan.startup.complete"})
                        message = await receive()  # lifespan.shutdown, after Hypercorn's grace period
                        # Flights still running here have no listener left that Hypercorn waits for.
                        nursery.cancel_scope.cancel()
                finally:
                    # Every flight has ended and queued its record: write them all, then stop.
                    if self.ledger is not None:
                        with trio.CancelScope(shield=True):
                            await self.ledger.aclose()
        finally:
            self._nursery = None
            if self.registry is not None:
                await self.registry.aclose()
        log.info("balancer.stop")
        await send({"type": "lifespan.shutdown.complete"})

    async def _reload_on_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread's trio run
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                try:
                    await self.reload()
                except ConfigError as exc:
                    log.error("config.reload_failed", error=str(exc))

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file. Flights in progress finish on the providers they hold."""
        if self.config.path is None:
            raise ConfigError("this balancer runs on a built-in config; there is no file to reload")
        new = await trio.to_thread.run_sync(load_config, self.config.path)
        assert self.registry is not None and self._nursery is not None
        retired = self.registry.reload(new)
        for runtime in retired:
            self._nursery.start_soon(runtime.close_when_unused)
        self.config = new
        self.router = Router(new)
        self.prices = PriceTable(new.prices)
        changed = sorted(r.name for r in retired)
        log.info(
            "config.reloaded", config=new.source, providers=[p.name for p in new.providers], replaced=changed
        )
        return {"reloaded": new.source, "providers": [p.name for p in new.providers], "replaced": changed}

    # -- dispatch ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path in ("/v1/messages", "/v1/messages/count_tokens"):
                _require(method, "POST")
                await self._messages(scope, receive, send)
            elif path == "/v1/models":
                _require(method, "GET")
                await send_json(send, 200, self._models_page(scope))
            elif path.startswith("/v1/models/"):
                _require(method, "GET")
                await send_json(send, 200, self._model(path.removeprefix("/v1/models/")))
            elif path == "/health":
                await send_json(send, 200, {"status": "ok", "providers": len(self.config.providers)})
            elif admin.handles(path):
                await admin.dispatch(self, method, path, scope.get("query_string", b""), send)
            else:
                raise NotFound(f"no endpoint {method} {path}")
        except BalancerError as exc:
            await send_error(send, exc)

    # -- /v1/messages ------------------------------------------------------------------------

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext(new_request_id(), client_identity(scope["headers"]), scope["path"])
        rid = [(b"x-balancer-request-id", ctx.id.encode())]
        try:
            body = await _read_body(scope, receive, self.config.server.max_body_bytes)
            request = _parse_request(scope, body)
            ctx.model, ctx.stream = request.model, request.stream
            assert self._nursery is not None and self.registry is not None, "lifespan not started"
            ctx.route = self.router.route_for(request.model).match
            providers = self.registry.runtimes
            attempts = self.router.plan(
                request.model,
                providers,
                now=trio.current_time(),
                session=request.session,
                # A rough input size (4 bytes a token) is enough to steer around a nearly empty bucket.
                need_tokens=len(body) // 4,
            )
        except BalancerError as exc:
            if not isinstance(exc, ClientGone):
                await send_error(send, exc, rid)
            await self._record(error_record(ctx, exc, 499 if isinstance(exc, ClientGone) else exc.status))
            return
        flight = Flight(request, attempts, providers)
        listener = flight.subscribe()
        self.flights.add(flight)
        if self._idle.is_set():
            self._idle = trio.Event()
        self._nursery.start_soon(self._run_flight, flight, ctx)
        try:
            if not await _write(listener, receive, send, rid):
                flight.disconnected = True
        finally:
            flight.unsubscribe(listener)

    async def _run_flight(self, flight: Flight, ctx: RequestContext) -> None:
        try:
            await flight.run()
        finally:
            self.flights.discard(flight)
            session = flight.request.session
            if session is not None and flight.completed and flight.provider is not None:
                self.router.remember(session, flight.provider, trio.current_time())
            record = flight_record(ctx, flight, self.prices, disconnected=flight.disconnected)
            await self._record(record)
            if not self.flights:
                self._idle.set()
            log.info(
                "request.end",
                request_id=ctx.id,
                model=ctx.model,
                provider=flight.provider,
                attempts=len(flight.tried),
                status=flight.status,
                error=flight.error,
                completed=flight.completed,
                disconnected=flight.disconnected,
                events=flight.events,
                bytes=flight.bytes,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                usage_source=record.usage_source,
                duration_ms=record.duration_ms,
            )
            if record.usage_source in (ESTIMATED, PARTIAL):
                log.warning(
                    "usage.estimated",
                    request_id=ctx.id,
                    provider=flight.provider,
                    usage_source=record.usage_source,
                    input_tokens=record.input_tokens,
                    output_tokens=record.output_tokens,
                )

    async def _record(self, record: Record) -> None:
        if self.ledger is not None:
            await self.ledger.record(record)

    # -- /v1/models --------------------------------------------------------------------------

    def _models_page(self, scope: Scope) -> dict[str, Any]:
        data = [_model_object(m) for m in listed_models(self.config)]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def _model(self, model_id: str) -> dict[str, Any]:
        if model_id in listed_models(self.config):
            return _model_object(model_id)
        raise NotFound(f"model {model_id!r} not found")


def _model_object(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": _MODELS_EPOCH}


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise _MethodNotAllowed(f"method {method} not allowed here; use {expected}")


class _MethodNotAllowed(BalancerError):
    status = 405
    error_type = "invalid_request_error"


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected while sending its request")
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def _parse_request(scope: Scope, body: bytes) -> UpstreamRequest:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean")
    return UpstreamRequest(
        path=scope["path"],
        query=scope.get("query_string", b""),
        headers=tuple(scope["headers"]),
        body=body,
        payload=payload,
        model=model,
        stream=stream,
    )


async def _write(
    listener: trio.MemoryReceiveChannel[Item], receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
) -> bool:
    """Drain one listener channel into the client; False if the client left before the end."""
    gone = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope, gone)
        started = False
        async for item in listener:
            if type(item) is bytes:
                await send({"type": "http.response.body", "body": item, "more_body": True})
            elif isinstance(item, Head):
                await send(
                    {"type": "http.response.start", "status": item.status, "headers": item.headers + extra}
                )
                started = True
            elif isinstance(item, Abort):
                # Returning without the final body message makes Hypercorn drop the connection,
                # so the client sees a broken response rather than a cut one that looks whole.
                log.warning("response.abort", reason=item.reason)
                nursery.cancel_scope.cancel()
                return False
        if not started:  # the flight ended without a word: a bug, but never a hung client
            await send({"type": "http.response.start", "status": 502, "headers": JSON_HEADERS + extra})
            await send({"type": "http.response.body", "body": b"{}", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        nursery.cancel_scope.cancel()
    return not gone.is_set()


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope, gone: trio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            scope.cancel()
            return


def create_app(config: Config | None = None) -> BalancerApp:
    """The app factory; ``hypercorn --worker-class trio 'trio_balancer.asgi:create_app()'``."""
    if config is None:
        config = load_config(os.environ.get(CONFIG_ENV) or None)
    if not structlog.is_configured():
        blog.configure(
            os.environ.get("TRIO_BALANCER_LOG_LEVEL", "info"),
            os.environ.get("TRIO_BALANCER_LOG_FORMAT", "console"),
        )
    return BalancerApp(config)
