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
import time
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import attrs
import structlog
import trio
from prometheus_client.core import GaugeMetricFamily

from . import __version__, admin
from . import logging as blog
from .accounting import (
    RequestContext,
    client_identity,
    error_record,
    flight_record,
    new_request_id,
    shared_record,
)
from .auth import ClientKey, KeyRing, is_loopback
from .cluster import Cluster, LimitRefused
from .config import DEFAULT_MODELS, Config, ConfigError, load_config
from .dedup import CachedResponse, ResponseCache, signature
from .errors import (
    BalancerError,
    ClientGone,
    HeadersTooLarge,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    error_body,
    error_event,
)
from .flight import Abort, Flight, Head, Item, SharePolicy, UpstreamRequest
from .health import ProviderHealth, State
from .ledger import Ledger, Record
from .limits import Limiter
from .metrics import Metrics, normalise_model
from .pricing import PriceTable
from .providers import Registry
from .reshape import Form, Passthrough, form_for
from .respond import JSON_HEADERS, Receive, Scope, Send, send_error, send_json
from .routing import Router, listed_models
from .stats import RecentStats
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
        self.shared: dict[str, Flight] = {}  # signature -> live flight others may join
        self.cluster: Cluster | None = None
        self.metrics = Metrics()
        self.metrics.add_live(self._live_metrics)
        self.stats = RecentStats()
        self.started_at = 0.0
        self._known_models = _known_models(config)
        self.cache = ResponseCache(ttl_s=config.dedup.cache_ttl_s, max_bytes=config.dedup.cache_max_bytes)
        self.prices = PriceTable(config.prices)
        self.router = Router(config)
        self.keyring = KeyRing(config.server.client_keys, config.server.admin_key_sha256)
        self.limiter = Limiter(config.server.max_concurrent)
        self.flights: set[Flight] = set()  # live flights, for shutdown, status and tests
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()

    def task_count(self) -> int:
        """Tasks the app owns right now (flights, their children, housekeeping)."""
        return 0 if self._nursery is None else count_tasks(self._nursery.child_tasks)

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
            self.started_at = trio.current_time()
            async with trio.open_nursery() as services:
                cc = self.config.cluster
                if cc.redis_url:
                    self.cluster = Cluster(
                        cc.redis_url,
                        instance_id=cc.instance_id,
                        lease_ttl_s=cc.lease_ttl_s,
                        apply_health=self._apply_remote_health,
                        status=self._cluster_status,
                    )
                    await services.start(self.cluster.run)
                if self.config.ledger.enabled:
                    lc = self.config.ledger
                    self.ledger = Ledger(lc.url, spill_path=lc.spill_path)
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
                    # Every flight has ended and queued its record: write them all, then stop
                    # the services (cluster loops run until cancelled).
                    if self.ledger is not None:
                        with trio.CancelScope(shield=True):
                            await self.ledger.aclose()
                    services.cancel_scope.cancel()
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
        self._known_models = _known_models(new)
        self.keyring = KeyRing(new.server.client_keys, new.server.admin_key_sha256)
        self.limiter.max_total = new.server.max_concurrent
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
                key = self._authenticate(scope)
                await self._messages(scope, receive, send, key)
            elif path == "/v1/models":
                _require(method, "GET")
                self._authenticate(scope)
                await send_json(send, 200, self._models_page(scope))
            elif path.startswith("/v1/models/"):
                _require(method, "GET")
                self._authenticate(scope)
                await send_json(send, 200, self._model(path.removeprefix("/v1/models/")))
            elif path == "/health":
                await send_json(send, 200, {"status": "ok", "providers": len(self.config.providers)})
            elif admin.handles(path):
                if not (path == "/metrics" and self.config.server.public_metrics):
                    self.keyring.check_admin(scope["headers"], scope.get("client"))
                await admin.dispatch(self, method, path, scope.get("query_string", b""), send)
            else:
                raise NotFound(f"no endpoint {method} {path}")
        except BalancerError as exc:
            await send_error(send, exc)

    def _authenticate(self, scope: Scope) -> ClientKey | None:
        """Who is calling: a configured client key, or (without keys) a loopback client."""
        server = self.config.server
        size = sum(len(n) + len(v) + 4 for n, v in scope["headers"])
        if size > server.max_header_bytes:
            raise HeadersTooLarge(f"request headers are over the limit of {server.max_header_bytes} bytes")
        if self.keyring.enabled:
            return self.keyring.identify(scope["headers"])
        if not server.allow_open and not is_loopback(scope.get("client")):
            raise PermissionDenied(
                "this balancer has no client keys, so it serves loopback clients only"
                " (configure [[server.client_keys]], or allow_open = true)"
            )
        return None

    # -- /v1/messages ------------------------------------------------------------------------

    async def _messages(self, scope: Scope, receive: Receive, send: Send, key: ClientKey | None) -> None:
        client = key.name if key is not None else client_identity(scope["headers"])
        ctx = RequestContext(new_request_id(), client, scope["path"])
        structlog.contextvars.bind_contextvars(request_id=ctx.id)  # every line of this request, flight too
        extra = [(b"x-balancer-request-id", ctx.id.encode())]
        try:
            lease = await self._acquire(client, key)
        except RateLimited as exc:
            await send_error(send, exc, extra)
            await self._record(error_record(ctx, exc, exc.status))
            return
        self.metrics.active_listeners.inc()
        try:
            await self._serve_messages(ctx, extra, scope, receive, send, key)
        finally:
            self.metrics.active_listeners.dec()
            self.limiter.release(client)
            if lease is not None and self.cluster is not None:
                with trio.CancelScope(shield=True):
                    await self.cluster.release(client, lease)

    async def _acquire(self, client: str, key: ClientKey | None) -> str | None:
        """Take this request's place in the limits: across instances (Redis) when clustered.

        Returns the cluster lease to release, if any. With Redis unreachable the per-client
        limits fall back to this instance's own counts, so requests keep flowing.
        """
        max_concurrent = key.max_concurrent if key else None
        per_minute = key.requests_per_minute if key else None
        shared = self.cluster is not None and bool(max_concurrent or per_minute) and not self.cluster.degraded
        lease = None
        if shared:
            assert self.cluster is not None
            try:
                lease = await self.cluster.acquire(
                    client, max_concurrent=max_concurrent, per_minute=per_minute
                )
            except LimitRefused as exc:
                what = (
                    f"{max_concurrent} concurrent requests"
                    if exc.reason == "concurrency"
                    else f"{per_minute} requests per minute"
                )
                raise RateLimited(
                    f"client {client!r} is at its limit of {what}",
                    headers={"retry-after": str(exc.retry_after)},
                ) from None
            except Exception:  # Redis went away mid-call: this instance's own counts
                shared = False
        self.limiter.acquire(
            client,
            trio.current_time(),
            max_concurrent=None if shared else max_concurrent,
            per_minute=None if shared else per_minute,
        )
        return lease

    async def _serve_messages(
        self,
        ctx: RequestContext,
        extra: list[tuple[bytes, bytes]],
        scope: Scope,
        receive: Receive,
        send: Send,
        client_key: ClientKey | None,
    ) -> None:
        try:
            with trio.move_on_after(self.config.server.body_timeout_s) as body_scope:
                body = await _read_body(scope, receive, self.config.server.max_body_bytes)
            if body_scope.cancelled_caught:
                raise RequestTimeout(
                    f"request body not complete within {self.config.server.body_timeout_s:g} s"
                )
            request = _parse_request(scope, body)
            ctx.model, ctx.stream = request.model, request.stream
            if (
                client_key is not None
                and client_key.models
                and not any(fnmatchcase(request.model, g) for g in client_key.models)
            ):
                raise PermissionDenied(f"client {client_key.name!r} may not use model {request.model!r}")
            log.info(
                "request.start",
                path=ctx.path,
                model=ctx.model,
                stream=ctx.stream,
                client=ctx.client,
                bytes=len(body),
            )
            assert self._nursery is not None and self.registry is not None, "lifespan not started"
            ctx.route = self.router.route_for(request.model).match
        except BalancerError as exc:
            if not isinstance(exc, ClientGone):
                await send_error(send, exc, extra)
            await self._record(error_record(ctx, exc, 499 if isinstance(exc, ClientGone) else exc.status))
            return

        key = self._dedup_key(scope, request, ctx)
        if key is not None:
            cached = self.cache.get(key, trio.current_time())
            if cached is None and self.cluster is not None and not self.cluster.degraded:
                cached = await self.cluster.cache_get(key)  # another instance may have answered it
            if cached is not None:
                ctx.dedup_role = "cache"
                await self._answer_shared(
                    ctx,
                    request,
                    _replay(cached),
                    receive,
                    send,
                    extra,
                    cached.provider,
                    cached.upstream_model,
                )
                return
            leader = self.shared.get(key)
            if leader is not None and not leader.done.is_set():
                ctx.dedup_role = "follower"
                listener = leader.subscribe()
                try:
                    await self._answer_shared(
                        ctx, request, listener, receive, send, extra, None, None, leader
                    )
                finally:
                    leader.unsubscribe(listener)
                return
            ctx.dedup_role = "leader"

        providers = self.registry.runtimes
        try:
            attempts = self.router.plan(
                request.model,
                providers,
                now=trio.current_time(),
                session=request.session,
                # A rough input size (4 bytes a token) is enough to steer around a nearly empty bucket.
                need_tokens=len(body) // 4,
            )
        except BalancerError as exc:
            await send_error(send, exc, extra)
            await self._record(error_record(ctx, exc, exc.status))
            return
        d = self.config.dedup
        share = SharePolicy(
            keep_history=key is not None,
            max_lag_events=d.max_lag_events,
            max_lag_s=d.max_lag_s,
            finish_orphans=d.finish_orphans and key is not None,
        )
        server = self.config.server
        flight = Flight(
            request,
            attempts,
            providers,
            share,
            observer=self,
            max_response_bytes=server.max_upstream_response_bytes,
            max_event_bytes=server.max_upstream_event_bytes,
        )
        if key is not None:
            self.shared[key] = flight
        listener = flight.subscribe()
        self.flights.add(flight)
        self.metrics.active_streams.set(len(self.flights))
        if self._idle.is_set():
            self._idle = trio.Event()
        self._nursery.start_soon(self._run_flight, flight, ctx, key)
        extra.append((b"x-balancer-dedup", ctx.dedup_role.encode()))
        try:
            delivery = await _write(listener, receive, send, extra, request.stream, flight)
            flight.disconnected = not delivery.complete
        finally:
            flight.unsubscribe(listener)

    def _dedup_key(self, scope: Scope, request: UpstreamRequest, ctx: RequestContext) -> str | None:
        if not self.config.dedup.enabled or request.path != "/v1/messages":
            return None
        for name, value in scope["headers"]:
            if name == b"x-balancer-no-dedup" and value.strip() not in (b"", b"0", b"false"):
                return None
        return signature(
            request.payload,
            path=request.path,
            query=request.query,
            headers=scope["headers"],
            identity=ctx.client,
            include_max_tokens=self.config.dedup.include_max_tokens,
        )

    async def _answer_shared(
        self,
        ctx: RequestContext,
        request: UpstreamRequest,
        items: trio.MemoryReceiveChannel[Item],
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        provider: str | None,
        upstream_model: str | None,
        leader: Flight | None = None,
    ) -> None:
        """A follower of a live flight, or a cache hit: no upstream request of its own."""
        extra.append((b"x-balancer-dedup", ctx.dedup_role.encode()))
        delivery = await _write(items, receive, send, extra, request.stream, leader)
        if leader is not None:
            provider, upstream_model = leader.provider, leader.upstream_model
        await self._record(
            shared_record(ctx, delivery.status, provider, upstream_model, disconnected=not delivery.complete)
        )

    async def _run_flight(self, flight: Flight, ctx: RequestContext, key: str | None) -> None:
        try:
            await flight.run()
        finally:
            self.flights.discard(flight)
            self.metrics.active_streams.set(len(self.flights))
            if key is not None:
                if self.shared.get(key) is flight:
                    del self.shared[key]
                self._maybe_cache(key, flight)
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

    def _maybe_cache(self, key: str, flight: Flight) -> None:
        """Keep a complete, successful response for identical requests; never errors or cuts."""
        history = flight.history
        if not (flight.completed and flight.status == 200 and history and isinstance(history[0], Head)):
            return
        head = history[0]
        chunks = [item for item in history[1:] if type(item) is bytes]
        self.cache.put(
            key,
            trio.current_time(),
            status=head.status,
            headers=head.headers,
            chunks=chunks,
            sse=flight.sse,
            provider=flight.provider,
            upstream_model=flight.upstream_model,
        )
        if self.cluster is not None and self.config.dedup.cache_ttl_s > 0:
            body = b"".join(chunks)
            entry = CachedResponse(
                head.status,
                head.headers,
                (body,),
                flight.sse,
                len(body),
                0.0,
                flight.provider,
                flight.upstream_model,
            )
            self.cluster.cache_put(key, entry, self.config.dedup.cache_ttl_s)

    async def _record(self, record: Record) -> None:
        """The single place a finished request is accounted: metrics, recent stats, ledger."""
        m = self.metrics
        provider = record.provider or "none"
        model = normalise_model(record.upstream_model or record.model, self._known_models)
        m.requests.labels(provider, model, str(record.status or 0)).inc()
        m.dedup.labels(record.dedup_role).inc()
        if record.ttfb_ms is not None and record.provider is not None:
            m.ttfb.labels(provider).observe(record.ttfb_ms / 1000)
        if record.events or record.bytes:
            m.events.labels(provider).inc(record.events)
            m.bytes.labels(provider).inc(record.bytes)
        for kind, n in (
            ("input", record.input_tokens),
            ("output", record.output_tokens),
            ("cache_read", record.cache_read_input_tokens),
            ("cache_write", record.cache_creation_input_tokens),
        ):
            if n:
                m.tokens.labels(provider, model, kind).inc(n)
        if record.cost_usd:
            m.cost.labels(provider, model).inc(record.cost_usd)
        if record.usage_source in (ESTIMATED, PARTIAL):
            m.estimated.labels(provider).inc()
        self.stats.request(
            time.time(),
            status=record.status,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            ttfb=None if record.ttfb_ms is None else record.ttfb_ms / 1000,
        )
        if self.ledger is not None:
            await self.ledger.record(record)

    # -- FlightObserver ----------------------------------------------------------------------

    def forward(self, seconds: float) -> None:
        self.metrics.forward.observe(seconds)
        self.stats.forward(time.time(), seconds)

    def failover(self, provider: str, reason: str) -> None:
        self.metrics.failovers.labels(provider, reason).inc()

    def health_changed(self, provider: str, health: ProviderHealth) -> None:
        """A cooldown started or ended here: tell the other instances."""
        if self.cluster is None:
            return
        now = trio.current_time()
        cooling = health.state is not State.HEALTHY
        self.cluster.publish_health(
            {
                "provider": provider,
                "state": "cooling" if cooling else "healthy",
                "until": time.time() + max(0.0, health.cooling_until - now),
                "message": health.last_error,
            }
        )

    def _apply_remote_health(self, message: dict[str, Any]) -> None:
        runtime = self.registry.runtimes.get(str(message.get("provider"))) if self.registry else None
        if runtime is None:
            return
        now = trio.current_time()
        runtime.health.apply_remote(
            now,
            cooling=message.get("state") == "cooling",
            cooling_until=now + (float(message.get("until", 0)) - time.time()),
            message=f"{message.get('message')} (on instance {message.get('instance')})",
        )
        log.info(
            "cluster.health_applied",
            provider=runtime.name,
            state=message.get("state"),
            instance=message.get("instance"),
        )

    def _cluster_status(self) -> dict[str, Any]:
        return {"flights": len(self.flights), "version": __version__}

    def _live_metrics(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "trio_balancer_provider_state",
            "1 for each provider's current health state",
            labels=["provider", "state"],
        )
        cooldown = GaugeMetricFamily(
            "trio_balancer_provider_cooldown_seconds", "Cooldown left per provider", labels=["provider"]
        )
        if self.registry is not None:
            now = trio.current_time()
            for name, runtime in self.registry.runtimes.items():
                snap = runtime.health.snapshot(now)
                for s in ("healthy", "cooling", "half_open"):
                    state.add_metric([name, s], 1.0 if snap.state.value == s else 0.0)
                cooldown.add_metric([name], max(0.0, snap.cooling_until - now))
        yield state
        yield cooldown
        if self.cluster is not None:
            degraded = GaugeMetricFamily(
                "trio_balancer_cluster_degraded", "1 while Redis is unreachable (local state only)"
            )
            degraded.add_metric([], 1.0 if self.cluster.degraded else 0.0)
            yield degraded
        cache = GaugeMetricFamily("trio_balancer_cache_bytes", "Bytes held by the response cache")
        cache.add_metric([], float(self.cache.bytes))
        yield cache
        if self.ledger is not None:
            written = GaugeMetricFamily(
                "trio_balancer_ledger_records_written", "Ledger records written since start"
            )
            written.add_metric([], float(self.ledger.written))
            yield written
            spilled = GaugeMetricFamily(
                "trio_balancer_ledger_spilled", "Records waiting in the spill file for the database"
            )
            spilled.add_metric([], float(self.ledger.spilled))
            yield spilled
            failed = GaugeMetricFamily(
                "trio_balancer_ledger_write_failures", "Failed ledger writes since start (retried)"
            )
            failed.add_metric([], float(self.ledger.failed_writes))
            yield failed

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


def _known_models(config: Config) -> set[str]:
    """Model ids that may be metric labels: what the config names, and the defaults."""
    known = set(listed_models(config)) | set(DEFAULT_MODELS)
    known.update(t.model for r in config.routes for t in r.targets if t.model)
    known.update(m for p in config.providers for m in p.models)
    return known


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


@attrs.frozen
class Delivery:
    status: int | None  # what the client was answered, None if nothing was
    complete: bool  # the client got the whole response (did not leave, was not cut off)


async def _write(
    listener: trio.MemoryReceiveChannel[Item],
    receive: Receive,
    send: Send,
    extra: list[tuple[bytes, bytes]],
    wants_stream: bool,
    flight: Flight | None = None,
) -> Delivery:
    """Drain one listener channel into the client, in the form it asked for."""
    gone = trio.Event()
    status: int | None = None
    form: Form = Passthrough()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope, gone)
        async for item in listener:
            if type(item) is bytes:
                out = form.chunk(item)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            elif isinstance(item, Head):
                form = form_for(wants_stream, item.headers)
                head = form.head(item.status, item.headers)
                if head is not None:
                    status = head[0]
                    await send({"type": "http.response.start", "status": status, "headers": head[1] + extra})
            elif isinstance(item, Abort):
                # Returning without the final body message makes Hypercorn drop the connection,
                # so the client sees a broken response rather than a cut one that looks whole.
                log.warning("response.abort", reason=item.reason)
                nursery.cancel_scope.cancel()
                return Delivery(status, False)
        dropped = flight is not None and flight.was_dropped(listener)
        end_head, tail = form.end()
        if dropped:
            end_head, tail = _dropped_ending(status)
        if end_head is not None:
            status = end_head[0]
            await send({"type": "http.response.start", "status": status, "headers": end_head[1] + extra})
        elif status is None:  # the flight ended without a word: a bug, but never a hung client
            status = 502
            await send({"type": "http.response.start", "status": 502, "headers": JSON_HEADERS + extra})
            tail = error_body("api_error", "the balancer produced no response")
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        nursery.cancel_scope.cancel()
    return Delivery(status, not gone.is_set() and not dropped)


def _dropped_ending(status: int | None) -> tuple[tuple[int, list[tuple[bytes, bytes]]] | None, bytes]:
    message = "this client fell too far behind the shared stream and was cut off"
    if status is not None:  # mid-stream: end it with an error event
        return None, error_event("api_error", message)
    return (502, list(JSON_HEADERS)), error_body("api_error", message)


def _replay(cached: CachedResponse) -> trio.MemoryReceiveChannel[Item]:
    """A cached response as a listener channel, ready to drain at full speed."""
    send, recv = trio.open_memory_channel[Item](len(cached.chunks) + 1)
    send.send_nowait(Head(cached.status, cached.headers))
    for chunk in cached.chunks:
        send.send_nowait(chunk)
    send.close()
    return recv


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
