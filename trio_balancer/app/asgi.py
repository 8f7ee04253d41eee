"""The ASGI application: the only module that speaks raw ASGI.

The lifespan task owns the app: the providers' HTTP clients and the nursery flights run in.
A request handler owns a small nursery of its own: a watcher that turns ``http.disconnect``
into a cancellation (Hypercorn does not cancel the app when a client leaves) and the writer
that drains its listener channel into the socket.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import structlog
import trio
from prometheus_client.core import GaugeMetricFamily

from trio_balancer import __version__
from trio_balancer import logging as blog
from trio_balancer.app import admin, hypercorn_fix
from trio_balancer.app.accounting import (
    CLIENT_LEFT,
    CUT,
    DELIVERED,
    Delivery,
    RequestContext,
    client_identity,
    fallback_record,
    new_request_id,
    request_record,
)
from trio_balancer.app.cluster import Cluster, LimitRefused
from trio_balancer.app.metrics import Metrics, normalise_model
from trio_balancer.app.respond import JSON_HEADERS, Receive, Scope, Send, send_error, send_json
from trio_balancer.config import DEFAULT_MODELS, Config, ConfigError, load_config
from trio_balancer.errors import (
    BalancerError,
    ClientGone,
    HeadersTooLarge,
    InternalError,
    NotFound,
    NotServing,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    StartupFailed,
    UnsupportedMediaType,
    error_body,
    error_event,
)
from trio_balancer.flight.byte_queue import ByteQueue
from trio_balancer.flight.flight import (
    LISTENER_BUFFER_BYTES,
    Abort,
    Flight,
    Head,
    Listener,
    SharePolicy,
    UpstreamRequest,
    item_size,
)
from trio_balancer.ledger import Ledger, LedgerUnavailable, Record
from trio_balancer.policy.auth import ClientKey, KeyRing, check_browser_reach, header, is_loopback
from trio_balancer.policy.health import ProviderHealth, State
from trio_balancer.policy.limits import Limiter
from trio_balancer.policy.routing import Router, listed_models
from trio_balancer.policy.stats import RecentStats
from trio_balancer.protocol.dedup import CachedResponse, ResponseCache, signature
from trio_balancer.protocol.pricing import PriceTable
from trio_balancer.protocol.reshape import Form, Passthrough, form_for
from trio_balancer.protocol.usage import ESTIMATED, PARTIAL
from trio_balancer.protocol.validation import parse_request_body, validate_messages_request
from trio_balancer.upstream.providers import ProviderRuntime, Registry

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
        self._handlers = 0  # /v1/messages handlers not yet recorded
        self._idle = trio.Event()
        self._idle.set()
        # Set when the app can no longer serve (a service died); `serve` exits non-zero on it.
        self.failed = trio.Event()
        self.failure: str | None = None
        self.serving = trio.Event()  # startup completed
        self._shutdown_asked = False  # lifespan.shutdown received

    def task_count(self) -> int:
        """Tasks the app owns right now (flights, their children, housekeeping)."""
        return 0 if self._nursery is None else count_tasks(self._nursery.child_tasks)

    def _update_idle(self) -> None:
        if self.flights or self._handlers:
            if self._idle.is_set():
                self._idle = trio.Event()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no flight is running and every request handled so far is recorded."""
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
        """Own the app's services and nursery from startup to shutdown.

        A start that cannot work (a ledger that cannot be opened) is reported to the server
        as ``lifespan.startup.failed``, so ``serve`` exits non-zero with the reason instead of
        serving 500s. Should the app fail later (a service dies), it stops serving: ``/health``
        answers 503, :attr:`failed` is set for ``serve`` to exit on, and the lifespan still
        completes its shutdown when the server asks.
        """
        message = await receive()
        assert message["type"] == "lifespan.startup"
        cannot_start: str | None = None
        try:
            self.registry = Registry(self.config)
            self.started_at = trio.current_time()
            async with trio.open_nursery() as services:
                try:
                    await self._start_services(services)
                except StartupFailed as exc:
                    cannot_start = str(exc)
                    services.cancel_scope.cancel()
                else:
                    await self._serve_until_shutdown(services, receive, send)
        except Exception as exc:
            self._close_on_failure(exc)
            if not self.serving.is_set():
                cannot_start = self.failure
            elif not self._shutdown_asked:
                await receive()  # serve saw `failed` and is shutting down: finish the protocol
        finally:
            self._nursery = None
            await self._close_registry()
        if cannot_start is not None:
            log.error("balancer.start_failed", reason=cannot_start)
            await send({"type": "lifespan.startup.failed", "message": cannot_start})
            return
        log.info("balancer.stop")
        await send({"type": "lifespan.shutdown.complete"})

    async def _serve_until_shutdown(self, services: trio.Nursery, receive: Receive, send: Send) -> None:
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
                self.serving.set()
                await receive()  # lifespan.shutdown, after Hypercorn's grace period
                self._shutdown_asked = True
                # Flights still running here have no listener left that Hypercorn waits for.
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            # Every flight has ended and queued its record: write them all, then stop the
            # services (cluster loops run until cancelled).
            if self.ledger is not None:
                with trio.CancelScope(shield=True):
                    await self.ledger.aclose()
            services.cancel_scope.cancel()

    async def _start_services(self, services: trio.Nursery) -> None:
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
            try:
                await services.start(self.ledger.run)
            except LedgerUnavailable as exc:
                raise StartupFailed(str(exc)) from None

    def _close_on_failure(self, exc: BaseException) -> None:
        """The app cannot serve any more: say so everywhere, once."""
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # the nursery's wrapping says nothing to an operator
        self.failure = f"{type(exc).__name__}: {exc}"
        log.critical("balancer.failed", error=self.failure, exc_info=exc)
        self.failed.set()

    async def _close_registry(self) -> None:
        if self.registry is not None:
            with trio.CancelScope(shield=True):
                await self.registry.aclose()

    async def _reload_on_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread's trio run
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                try:
                    await self.reload()
                except ConfigError as exc:
                    log.error("config.reload_failed", error=str(exc))
                except Exception:  # a bug in reload must not take the app down
                    log.exception("config.reload_failed")

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file. Flights in progress finish on the providers they hold."""
        if self.config.path is None:
            raise ConfigError("this balancer runs on a built-in config; there is no file to reload")
        new = await trio.to_thread.run_sync(load_config, self.config.path)
        assert self.registry is not None and self._nursery is not None
        retired = self.registry.reload(new)
        for runtime in retired:
            self._nursery.start_soon(_close_when_unused, runtime)
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
                await send_json(send, *self._health())
            elif admin.handles(path):
                if not (path == "/metrics" and self.config.server.public_metrics):
                    self.keyring.check_admin(scope["headers"], scope.get("client"))
                    if self.keyring.admin_sha256 is None:  # trusted for being loopback: not from a page
                        check_browser_reach(
                            scope["headers"], check_host=True, allowed_hosts=self.config.server.allowed_hosts
                        )
                await admin.dispatch(self, method, path, scope.get("query_string", b""), send)
            else:
                raise NotFound(f"no endpoint {method} {path}")
        except BalancerError as exc:
            log.info("request.refused", method=method, path=path, status=exc.status, reason=exc.message)
            await send_error(send, exc)

    def _health(self) -> tuple[int, dict[str, Any]]:
        """Liveness: 200 only while requests can be served."""
        if self.failure is not None:
            return 503, {"status": "failed", "error": self.failure}
        if self._nursery is None:
            return 503, {"status": "not serving"}
        return 200, {"status": "ok", "providers": len(self.config.providers)}

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
        # No key to present: whoever reaches us is trusted, so a web page must not reach us.
        check_browser_reach(
            scope["headers"], check_host=not server.allow_open, allowed_hosts=server.allowed_hosts
        )
        return None

    # -- /v1/messages ------------------------------------------------------------------------

    async def _messages(self, scope: Scope, receive: Receive, send: Send, key: ClientKey | None) -> None:
        """One request to ``/v1/messages*``, from its arrival to its record.

        Whatever happens inside (a bad body, a bug of ours, a cancellation at shutdown), the
        ``finally`` is reached, and it is where the request is accounted for.
        """
        client = key.name if key is not None else client_identity(scope["headers"])
        ctx = RequestContext(new_request_id(), client, scope["path"])
        structlog.contextvars.bind_contextvars(request_id=ctx.id)  # every line of this request, flight too
        extra = [(b"x-balancer-request-id", ctx.id.encode())]
        lease: str | None = None
        admitted = False
        self._handlers += 1
        self._update_idle()
        try:
            lease = await self._acquire(client, key)
            admitted = True
            self.metrics.active_listeners.inc()
            await self._serve_messages(ctx, extra, scope, receive, send, key)
        except BalancerError as exc:
            await _answer_error(ctx, send, exc, extra)
        except Exception:  # a bug of ours: this client gets an error, everyone else goes on
            log.exception("request.crash", path=ctx.path)
            await _answer_error(ctx, send, InternalError("internal error in the balancer"), extra)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if admitted:
                        self.metrics.active_listeners.dec()
                        self.limiter.release(client)
                        if lease is not None and self.cluster is not None:
                            await self.cluster.release(client, lease)
                finally:  # the record is made whatever releasing the limits did
                    ctx.handler_done = True
                    try:
                        await self._finish_request(ctx)
                    finally:
                        self._handlers -= 1
                        self._update_idle()

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
        """Read and check the request, then answer it: from the cache, another flight, or a new one.

        Every check that can refuse the request runs before any upstream call; refusals are
        raised as :class:`BalancerError` and answered by the caller.
        """
        server = self.config.server
        _require_json(scope["headers"])
        with trio.move_on_after(server.body_timeout_s) as body_scope:
            body = await _read_body(scope, receive, server.max_body_bytes)
        if body_scope.cancelled_caught:
            raise RequestTimeout(f"request body not complete within {server.body_timeout_s:g} s")
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
        if self._nursery is None or self.registry is None:
            raise NotServing("the balancer is not serving requests (starting, stopping or failed)")
        ctx.route = self.router.route_for(request.model).match

        key = self._dedup_key(scope, request, ctx)
        if key is not None:
            cached = self.cache.get(key, trio.current_time())
            if cached is None and self.cluster is not None and not self.cluster.degraded:
                cached = await self.cluster.cache_get(key)  # another instance may have answered it
            if cached is not None:
                ctx.dedup_role = "cache"
                ctx.shared_from = (cached.provider, cached.upstream_model)
                extra.append((b"x-balancer-dedup", b"cache"))
                await _write(ctx.delivery, _replay(cached), receive, send, extra, request.stream)
                return
            leader = self.shared.get(key)
            if leader is not None and leader.joinable:
                ctx.dedup_role = "follower"
                extra.append((b"x-balancer-dedup", b"follower"))
                listener = leader.subscribe()
                try:
                    await _write(ctx.delivery, listener, receive, send, extra, request.stream, leader)
                finally:
                    leader.unsubscribe(listener)
                    ctx.shared_from = (leader.provider, leader.upstream_model)
                return
            ctx.dedup_role = "leader"

        providers = self.registry.runtimes
        attempts = self.router.plan(
            request.model,
            providers,
            now=trio.current_time(),
            session=request.session,
            # A rough input size (4 bytes a token) is enough to steer around a nearly empty bucket.
            need_tokens=len(body) // 4,
        )
        d = self.config.dedup
        share = SharePolicy(
            keep_history=key is not None,
            max_lag_events=d.max_lag_events,
            max_lag_bytes=d.max_lag_bytes,
            max_lag_s=d.max_lag_s,
            finish_orphans=d.finish_orphans and key is not None,
            max_shared_bytes=d.max_shared_bytes,
        )
        flight = Flight(
            request,
            attempts,
            providers,
            share,
            observer=self,
            max_response_bytes=server.max_upstream_response_bytes,
            max_event_bytes=server.max_upstream_event_bytes,
        )
        listener = flight.subscribe()
        self._nursery.start_soon(self._run_flight, flight, ctx, key)
        # From here on the flight will end and record, whatever this handler does.
        ctx.flight = flight
        if key is not None:
            self.shared[key] = flight
        self.flights.add(flight)
        self.metrics.active_streams.set(len(self.flights))
        self._update_idle()
        extra.append((b"x-balancer-dedup", ctx.dedup_role.encode()))
        try:
            await _write(ctx.delivery, listener, receive, send, extra, request.stream, flight)
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

    async def _run_flight(self, flight: Flight, ctx: RequestContext, key: str | None) -> None:
        """The flight's task in the app nursery: nothing it raises may reach that nursery."""
        try:
            await flight.run()
        except Exception:  # Flight.run answers its own errors; this is a bug in that answer
            log.exception("flight.crash", request_id=ctx.id, provider=flight.provider)
            flight.error = flight.error or "api_error"
        finally:
            with trio.CancelScope(shield=True):
                self._flight_ended(flight, ctx, key)
                await self._finish_request(ctx)

    def _flight_ended(self, flight: Flight, ctx: RequestContext, key: str | None) -> None:
        """Bookkeeping when a flight ends: registries first (cannot fail), then what might."""
        self.flights.discard(flight)
        if key is not None and self.shared.get(key) is flight:
            del self.shared[key]
        self._update_idle()
        try:
            self.metrics.active_streams.set(len(self.flights))
            if key is not None:
                self._maybe_cache(key, flight)
            session = flight.request.session
            if session is not None and flight.completed and flight.provider is not None:
                self.router.remember(session, flight.provider, trio.current_time())
        except Exception:
            log.exception("flight.bookkeeping_failed", request_id=ctx.id)

    async def _finish_request(self, ctx: RequestContext) -> None:
        """The one place a request is recorded; reached by its handler and by its flight."""
        if not ctx.claim_record():
            return
        try:
            record = request_record(ctx, self.prices)
        except Exception:
            log.exception("accounting.crash", request_id=ctx.id)
            record = fallback_record(ctx)
        if record.outcome == CUT:
            log.warning("request.cut", request_id=ctx.id, status=record.status, dedup=record.dedup_role)
        log.info(
            "request.end",
            request_id=ctx.id,
            attempts=len(record.attempts),
            error=record.error_type,
            dedup=record.dedup_role,
            **{name: getattr(record, name) for name in _END_FIELDS},
        )
        if record.usage_source in (ESTIMATED, PARTIAL):
            log.warning(
                "usage.estimated",
                request_id=ctx.id,
                provider=record.provider,
                usage_source=record.usage_source,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
            )
        await self._record(record)

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
        """Account a finished request: metrics and recent stats (best effort), then the ledger."""
        try:
            self._count(record)
        except Exception:  # a metrics bug must not cost the ledger its record
            log.exception("metrics.record_failed", request_id=record.id)
        if self.ledger is not None:
            await self.ledger.record(record)

    def _count(self, record: Record) -> None:
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
        scalars: list[tuple[str, str, float]] = [
            ("trio_balancer_cache_bytes", "Bytes held by the response cache", float(self.cache.bytes))
        ]
        if self.cluster is not None:
            scalars.append(("trio_balancer_cluster_degraded", "1 while Redis is unreachable (local state only)",
                            float(self.cluster.degraded)))  # fmt: skip
        ledger = self.ledger
        if ledger is not None:
            scalars += [
                ("trio_balancer_ledger_records_written", "Ledger records written since start", float(ledger.written)),
                ("trio_balancer_ledger_spilled", "Records waiting in the spill file for the database",
                 float(ledger.spilled)),
                ("trio_balancer_ledger_write_failures", "Failed ledger writes since start (retried)",
                 float(ledger.failed_writes)),
                ("trio_balancer_ledger_degraded",
                 "1 while records cannot reach the primary store (spilled or held in memory)", float(ledger.degraded)),
                ("trio_balancer_ledger_backlog", "Records held in memory because no store takes them",
                 float(ledger.backlog)),
                ("trio_balancer_ledger_lost_records", "Records given up since start (each logged whole)",
                 float(ledger.lost)),
            ]  # fmt: skip
        for name, help_text, value in scalars:
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge

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


async def _close_when_unused(runtime: ProviderRuntime) -> None:
    """A retired provider's clients close once its last flight lets go; never fails the app."""
    try:
        await runtime.close_when_unused()
    except Exception:
        log.exception("provider.close_failed", provider=runtime.name)


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


# What the one-line summary of a finished request says, from its record.
_END_FIELDS = ("model", "provider", "status", "outcome", "events", "bytes", "input_tokens", "output_tokens",
               "usage_source", "duration_ms")  # fmt: skip


def _known_models(config: Config) -> set[str]:
    """Model ids that may be metric labels: what the config names, and the defaults."""
    known = set(listed_models(config)) | set(DEFAULT_MODELS)
    known.update(t.model for r in config.routes for t in r.targets if t.model)
    known.update(m for p in config.providers for m in p.models)
    return known


def _model_object(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": _MODELS_EPOCH}


def _require_json(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """The body must be declared JSON: what every API client sends, and what a web page's
    "simple" cross-site request (text/plain, a form) cannot."""
    content_type = header(headers, b"content-type") or b""
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise UnsupportedMediaType("content-type: must be application/json")


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
    payload = parse_request_body(body)
    validate_messages_request(payload)
    return UpstreamRequest(
        path=scope["path"],
        query=scope.get("query_string", b""),
        headers=tuple(scope["headers"]),
        body=body,
        payload=payload,
        model=payload["model"],
        stream=payload.get("stream", False),
    )


async def _answer_error(
    ctx: RequestContext, send: Send, exc: BalancerError, extra: list[tuple[bytes, bytes]]
) -> None:
    """Answer ``exc`` if nothing was sent yet; a started response can only be cut."""
    if isinstance(exc, ClientGone):
        ctx.delivery.outcome = CLIENT_LEFT
        return
    if ctx.flight is None:
        ctx.error = exc
    if ctx.delivery.status is not None:
        return  # mid-response: returning without the final body drops the connection
    ctx.delivery.status = exc.status
    await send_error(send, exc, extra)
    ctx.delivery.outcome = DELIVERED


async def _write(
    delivery: Delivery,
    listener: Listener,
    receive: Receive,
    send: Send,
    extra: list[tuple[bytes, bytes]],
    wants_stream: bool,
    flight: Flight | None = None,
) -> None:
    """Drain one listener into the client, in the form it asked for; ``delivery`` says how far.

    A watcher turns the client's leaving into a cancellation while the body streams. It is
    stopped before the final send: Hypercorn queues its ``http.disconnect`` as soon as a
    response is complete, while that last ``send`` is still closing or recycling the
    connection, and cancelling it there left HTTP/1.0 and ``Connection: close`` clients
    hanging and keep-alive connections never reaped.
    """
    gone = trio.Event()
    form: Form = Passthrough()
    aborted = False
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
                    delivery.status = head[0]
                    await send({"type": "http.response.start", "status": head[0], "headers": head[1] + extra})
            elif isinstance(item, Abort):
                log.warning("response.abort", reason=item.reason)
                aborted = True
                break
        nursery.cancel_scope.cancel()  # stop watching: what follows must not be cancelled
    if gone.is_set():
        delivery.outcome = CLIENT_LEFT
        return
    if aborted:
        # Returning without the final body message makes Hypercorn drop the connection, so
        # the client sees a broken response rather than a cut one that looks whole.
        return
    dropped = flight is not None and flight.was_dropped(listener)
    end_head, tail = _dropped_ending(delivery.status) if dropped else form.end()
    if end_head is not None:
        delivery.status = end_head[0]
        await send({"type": "http.response.start", "status": end_head[0], "headers": end_head[1] + extra})
    elif delivery.status is None:  # the flight ended without a word: a bug, but never a hung client
        log.error("response.empty")
        delivery.status = 502
        await send({"type": "http.response.start", "status": 502, "headers": JSON_HEADERS + extra})
        tail = error_body("api_error", "the balancer produced no response")
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    delivery.outcome = CUT if dropped else DELIVERED


def _dropped_ending(status: int | None) -> tuple[tuple[int, list[tuple[bytes, bytes]]] | None, bytes]:
    message = "this client fell too far behind the shared stream and was cut off"
    if status is not None:  # mid-stream: end it with an error event
        return None, error_event("api_error", message)
    return (502, list(JSON_HEADERS)), error_body("api_error", message)


def _replay(cached: CachedResponse) -> Listener:
    """A cached response as a listener, ready to drain at full speed (it is in memory already)."""
    listener: Listener = ByteQueue(LISTENER_BUFFER_BYTES, item_size)
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


def create_app(config: Config | None = None) -> BalancerApp:
    """The app factory; ``hypercorn --worker-class trio 'trio_balancer.asgi:create_app()'``."""
    hypercorn_fix.install()  # keep-alive connections close when their clients do
    if config is None:
        config = load_config(os.environ.get(CONFIG_ENV) or None)
    if not structlog.is_configured():
        blog.configure(
            os.environ.get("TRIO_BALANCER_LOG_LEVEL", "info"),
            os.environ.get("TRIO_BALANCER_LOG_FORMAT", "console"),
        )
    return BalancerApp(config)
