"""What the operator's endpoints see of the app: a narrow view, read-only but for two actions.

``/status``, ``/providers``, ``/usage``, ``/metrics`` and the admin actions take this view
rather than the app, so they cannot reach into handlers or flights, and the app does not
import them back (no import circle).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio
from prometheus_client.core import GaugeMetricFamily

from trio_balancer.app.state import AppState
from trio_balancer.app.supervisor import FlightSupervisor
from trio_balancer.flight.outcome import FlightView

__all__ = ["OperatorView"]


class OperatorView:
    """What status, admin and the live gauges read: state, flights' views, two actions."""

    def __init__(
        self,
        state: AppState,
        supervisor: FlightSupervisor,
        failure: Callable[[], str | None],
        reload: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self.state = state
        self._supervisor = supervisor
        self._failure = failure
        self.reload = reload  # re-read the config file (POST /admin/reload)

    @property
    def failure(self) -> str | None:
        """Why the app stopped serving, if it did."""
        return self._failure()

    def flights(self) -> list[FlightView]:
        return [f.view() for f in list(self._supervisor.flights)]

    def shared_flights(self) -> int:
        return len(self._supervisor.shared)

    def task_count(self) -> int:
        return self._supervisor.task_count()

    def uptime_s(self) -> float:
        return trio.current_time() - self.state.started_at

    def reset_provider(self, name: str) -> bool:
        """End a provider's cooldown now; False if there is no such provider."""
        registry = self.state.registry
        runtime = registry.runtimes.get(name) if registry is not None else None
        if runtime is None:
            return False
        runtime.health.reset()
        return True

    def providers(self) -> list[dict[str, Any]]:
        registry = self.state.registry
        if registry is None:
            return []
        now = trio.current_time()
        wall = time.time()
        out = []
        for name, runtime in registry.runtimes.items():
            snap = runtime.health.snapshot(now)
            out.append(
                {
                    "name": name,
                    "kind": runtime.config.kind,
                    "base_url": runtime.config.base_url,
                    "state": snap.state.value,
                    "cooldown_remaining_s": round(max(0.0, snap.cooling_until - now), 3),
                    "consecutive_failures": snap.consecutive_failures,
                    "last_error": snap.last_error,
                    "last_error_at": None
                    if snap.last_error_at is None
                    else round(wall - (now - snap.last_error_at), 3),
                    "ttfb_ewma_ms": None
                    if runtime.latency.value is None
                    else round(runtime.latency.value * 1000, 1),
                    "rate_limited_soon": runtime.limits.pressed(now),
                    "in_flight": runtime.in_use,
                    "counters": snap.counters,
                }
            )
        return out

    def gauges(self) -> Iterable[GaugeMetricFamily]:
        """The metrics read at scrape time: provider states, cache, cluster and ledger."""
        state = GaugeMetricFamily(
            "trio_balancer_provider_state",
            "1 for each provider's current health state",
            labels=["provider", "state"],
        )
        cooldown = GaugeMetricFamily(
            "trio_balancer_provider_cooldown_seconds", "Cooldown left per provider", labels=["provider"]
        )
        registry = self.state.registry
        if registry is not None:
            now = trio.current_time()
            for name, runtime in registry.runtimes.items():
                snap = runtime.health.snapshot(now)
                for s in ("healthy", "cooling", "half_open"):
                    state.add_metric([name, s], 1.0 if snap.state.value == s else 0.0)
                cooldown.add_metric([name], max(0.0, snap.cooling_until - now))
        yield state
        yield cooldown
        for name, help_text, value in self._scalars():
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge

    def _scalars(self) -> list[tuple[str, str, float]]:
        scalars: list[tuple[str, str, float]] = [
            ("trio_balancer_cache_bytes", "Bytes held by the response cache", float(self.state.cache.bytes))
        ]
        cluster = self.state.cluster
        if cluster is not None:
            scalars.append(("trio_balancer_cluster_degraded", "1 while Redis is unreachable (local state only)",
                            float(cluster.degraded)))  # fmt: skip
        ledger = self.state.ledger
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
        return scalars
