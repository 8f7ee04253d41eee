"""The ASGI application: the lifespan that owns the services, and the dispatch of requests.

The lifespan task owns the app: the providers' HTTP clients, the ledger and cluster services,
and the nursery flights run in (:mod:`.supervisor`). A request is dispatched by path after
its caller is authenticated: ``/v1/messages*`` to :mod:`.messages`, the operator's endpoints
to :mod:`.admin` over a read-only :class:`~.view.OperatorView`.
"""

from __future__ import annotations

import os
import signal
import threading
from functools import partial
from typing import Any

import structlog
import trio

from trio_balancer import __version__
from trio_balancer import logging as blog
from trio_balancer.app import admin, hypercorn_fix
from trio_balancer.app.accounting import RecordSink
from trio_balancer.app.alerts import Notifier
from trio_balancer.app.cluster import Cluster
from trio_balancer.app.flight_reports import FlightReports, apply_remote_health
from trio_balancer.app.messages import MessagesEndpoint
from trio_balancer.app.models import model_object, models_page
from trio_balancer.app.respond import Receive, Scope, Send, require_method, send_empty, send_error, send_json
from trio_balancer.app.state import AppState
from trio_balancer.app.supervisor import FlightSupervisor, count_tasks
from trio_balancer.app.view import OperatorView
from trio_balancer.app.workers import WORKER_ENV, limits_need_redis
from trio_balancer.config import Config, ConfigError, load_config
from trio_balancer.errors import (
    BalancerError,
    HeadersTooLarge,
    NotFound,
    PermissionDenied,
    StartupFailed,
    leaf_exceptions,
)
from trio_balancer.flight.flight import Flight
from trio_balancer.flight.outcome import FlightOutcome
from trio_balancer.ledger import Ledger, LedgerUnavailable
from trio_balancer.policy.auth import ClientKey, check_browser_reach, is_loopback
from trio_balancer.protocol.dedup import ResponseCache
from trio_balancer.upstream.providers import ProviderRuntime, Registry
from trio_balancer.upstream.request import COUNT_TOKENS_PATH, MESSAGES_PATH, UpstreamRequest

__all__ = ["CONFIG_ENV", "BalancerApp", "count_tasks", "create_app"]

CONFIG_ENV = "TRIO_BALANCER_CONFIG"


log = blog.get_logger("trio_balancer.app.asgi")
# How long a time zone switch waits for the ledger to write what came before it.
LEDGER_SETTLE_S = 5.0


class BalancerApp:
    """The ASGI app: ``create_app(config)`` makes one; Hypercorn runs its lifespan and requests."""

    def __init__(self, config: Config) -> None:
        self.state = state = AppState.from_config(config)
        sink = RecordSink(state)
        self.supervisor = FlightSupervisor(sink, self._flight_ended, state.metrics.active_streams.set)
        self._messages = MessagesEndpoint(state, self.supervisor, sink, FlightReports(state))
        self.view = OperatorView(state, self.supervisor, lambda: self.failure, self.reload)
        state.metrics.add_live(self.view.gauges)
        # Set when the app can no longer serve (a service died); `serve` exits non-zero on it.
        self.failed = trio.Event()
        self.failure: str | None = None
        self.serving = trio.Event()  # startup completed
        self._shutdown_asked = False  # lifespan.shutdown received

    # The app's state under the names tests and embedders use.
    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def registry(self) -> Registry | None:
        return self.state.registry

    @property
    def ledger(self) -> Ledger | None:
        return self.state.ledger

    @property
    def cluster(self) -> Cluster | None:
        return self.state.cluster

    @property
    def cache(self) -> ResponseCache:
        return self.state.cache

    @property
    def flights(self) -> set[Flight]:
        return self.supervisor.flights

    @property
    def shared(self) -> dict[str, Flight]:
        return self.supervisor.shared

    def task_count(self) -> int:
        """Tasks the app owns right now (flights, their children, housekeeping)."""
        return self.supervisor.task_count()

    async def wait_idle(self) -> None:
        """Return once no flight is running and every request handled so far is recorded."""
        await self.supervisor.wait_idle()

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
            self.state.registry = Registry(self.config)
            self.state.started_at = trio.current_time()
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
            await self._close_registry()
        if cannot_start is not None:
            log.error("balancer.start_failed", reason=cannot_start)
            await send({"type": "lifespan.startup.failed", "message": cannot_start})
            return
        log.info("balancer.stop")
        await send({"type": "lifespan.shutdown.complete"})

    async def _serve_until_shutdown(self, services: trio.Nursery, receive: Receive, send: Send) -> None:
        try:
            async with self.supervisor.running() as nursery:
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
                # Flights still running here have no listener left that Hypercorn waits for:
                # leaving `running` cancels them.
        finally:
            # Every flight has ended and queued its record: write them all, then stop the
            # services (cluster loops run until cancelled).
            if self.ledger is not None:
                with trio.CancelScope(shield=True):
                    await self.ledger.aclose()
            services.cancel_scope.cancel()

    async def _start_services(self, services: trio.Nursery) -> None:
        state = self.state
        state.notifier = Notifier(lambda: state.config.alerts, lambda: state.budgets.instance)
        await services.start(state.notifier.run)
        cc = self.config.cluster
        if cc.redis_url:
            self.state.cluster = cluster = Cluster(
                cc.redis_url,
                instance_id=cc.instance_id,
                lease_ttl_s=cc.lease_ttl_s,
                apply_health=partial(apply_remote_health, self.state),
                status=self._cluster_status,
                thinking=self.state.thinking,
            )
            await services.start(cluster.run)
        if self.config.ledger.enabled:
            lc = self.config.ledger
            self.state.ledger = ledger = Ledger(lc.url, spill_path=lc.spill_path)
            try:
                await services.start(ledger.run)
            except LedgerUnavailable as exc:
                raise StartupFailed(str(exc)) from None
            sync_every = lambda: state.config.server.budget_sync_s  # noqa: E731 - read at each turn
            state.budgets.settled = partial(_ledger_has, ledger)
            await services.start(
                partial(state.budgets.run, ledger.reader, sync_every, lambda: state.budgets_wanted)
            )

    def _close_on_failure(self, exc: BaseException) -> None:
        """The app cannot serve any more: say so everywhere, once."""
        exc = leaf_exceptions(exc)[0]  # the nursery's wrapping says nothing to an operator
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
        if WORKER_ENV in os.environ and (problem := limits_need_redis(new)) is not None:
            raise ConfigError(f"not with several workers: {problem}")  # as the start refuses it
        nursery = self.supervisor.nursery
        assert nursery is not None
        retired = self.state.apply(new)
        for runtime in retired:
            nursery.start_soon(_close_when_unused, runtime)
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
            if path in (MESSAGES_PATH, COUNT_TOKENS_PATH):
                require_method(method, "POST")
                key = self._authenticate(scope)
                await self._messages.handle(scope, receive, send, key)
            elif path == "/v1/models":
                require_method(method, "GET")
                self._authenticate(scope)
                await send_json(send, 200, models_page(self.config, scope.get("query_string", b"")))
            elif path.startswith("/v1/models/"):
                require_method(method, "GET")
                self._authenticate(scope)
                await send_json(send, 200, model_object(self.config, path.removeprefix("/v1/models/")))
            elif path == "/health":
                await send_json(send, *self._health())
            elif path == "/" and method == "HEAD":  # Claude Code probes its base URL at start
                await send_empty(send, self._health()[0])
            elif path == "/":
                require_method(method, "GET")
                await send_json(send, *self._health())
            elif admin.handles(path):
                keyring = self.state.keyring
                if not (path == "/metrics" and self.config.server.public_metrics):
                    keyring.check_admin(scope["headers"], scope.get("client"))
                    if keyring.admin_sha256 is None:  # trusted for being loopback: not from a page
                        check_browser_reach(
                            scope["headers"], check_host=True, allowed_hosts=self.config.server.allowed_hosts
                        )
                await admin.dispatch(self.view, method, path, scope.get("query_string", b""), send)
            else:
                raise NotFound(f"no endpoint {method} {path}")
        except BalancerError as exc:
            log.info("request.refused", method=method, path=path, status=exc.status, reason=exc.message)
            await send_error(send, exc)

    def _health(self) -> tuple[int, dict[str, Any]]:
        """Liveness: 200 only while requests can be served."""
        if self.failure is not None:
            return 503, {"status": "failed", "error": self.failure}
        if not self.supervisor.serving:
            return 503, {"status": "not serving"}
        return 200, {"status": "ok", "providers": len(self.config.providers)}

    def _authenticate(self, scope: Scope) -> ClientKey | None:
        """Who is calling: a configured client key, or (without keys) a loopback client."""
        server = self.config.server
        size = sum(len(n) + len(v) + 4 for n, v in scope["headers"])
        if size > server.max_header_bytes:
            raise HeadersTooLarge(f"request headers are over the limit of {server.max_header_bytes} bytes")
        keyring = self.state.keyring
        if keyring.enabled:
            return keyring.identify(scope["headers"])
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

    def _flight_ended(self, request: UpstreamRequest, outcome: FlightOutcome, key: str | None) -> None:
        self._messages.flight_ended(request, outcome, key)

    def _cluster_status(self) -> dict[str, Any]:
        return {"flights": len(self.supervisor.flights), "version": __version__}


async def _ledger_has(ledger: Ledger, count: int) -> bool:
    """Whether the primary store holds the first ``count`` records this process made (waiting
    a little for the writer's batch): nothing of them spilled or held back."""
    with trio.move_on_after(LEDGER_SETTLE_S):
        await ledger.wait_written(count)
    return ledger.written >= count and not ledger.degraded


async def _close_when_unused(runtime: ProviderRuntime) -> None:
    """A retired provider's clients close once its last flight lets go; never fails the app."""
    try:
        await runtime.close_when_unused()
    except Exception:
        log.exception("provider.close_failed", provider=runtime.name)


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
