"""Health and progress between flights and everything that watches them.

Out: what a flight reports as it goes (forward latency, failovers, a provider's health
changing) to the metrics, the status page's stats and, through Redis, the other instances.
In: another instance's health news applied to this one's providers.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from trio_balancer.app.state import AppState
from trio_balancer.logging import get_logger
from trio_balancer.policy.health import ProviderHealth, State

__all__ = ["FlightReports", "apply_remote_health"]

log = get_logger("trio_balancer.app.flight_reports")


class FlightReports:
    """What flights report as they go, to the metrics, the status page and the other instances."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    def forward(self, seconds: float) -> None:
        self._state.metrics.forward.observe(seconds)
        self._state.stats.forward(time.time(), seconds)

    def failover(self, provider: str, reason: str) -> None:
        self._state.metrics.failovers.labels(provider, reason).inc()
        self._state.health_history.failover(time.time(), provider, reason)

    def health_changed(self, provider: str, health: ProviderHealth) -> None:
        """A cooldown started or ended here: remember it, and tell the other instances."""
        now = trio.current_time()
        cooling = health.state is not State.HEALTHY
        cooling_for = max(0.0, health.cooling_until - now) if cooling else 0.0
        state = "cooling" if cooling else "healthy"
        self._state.health_history.changed(time.time(), provider, state, cooling_for, health.last_error)
        notifier = self._state.notifier
        if notifier is not None:
            event = "provider_unhealthy" if cooling else "provider_recovered"
            notifier.post({"event": event, "provider": provider, "cooldown_s": round(cooling_for, 3),
                           "reason": health.last_error})  # fmt: skip
        cluster = self._state.cluster
        if cluster is None:
            return
        cluster.publish_health(
            {
                "provider": provider,
                "state": "cooling" if cooling else "healthy",
                "until": time.time() + max(0.0, health.cooling_until - now),
                "message": health.last_error,
            }
        )


def apply_remote_health(state: AppState, message: dict[str, Any]) -> None:
    """Another instance saw a provider cool down or recover: apply it to this one's health."""
    runtime = state.registry.runtimes.get(str(message.get("provider"))) if state.registry else None
    if runtime is None:
        return
    now = trio.current_time()
    cooling = message.get("state") == "cooling"
    state.health_history.changed(
        time.time(),
        runtime.name,
        "cooling" if cooling else "healthy",
        max(0.0, float(message.get("until", 0)) - time.time()) if cooling else 0.0,
        f"{message.get('message')} (on instance {message.get('instance')})",
    )
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
