"""Per-provider health as an explicit state machine, with the clock passed in.

    HEALTHY --failure--> COOLING --cooldown over--> HALF_OPEN --success--> HEALTHY
                            ^                          |
                            +---------failure----------+

A failure that is the provider's fault starts a cooldown: as long as the provider asked for
(``retry-after``, rate-limit reset headers), otherwise exponential backoff with jitter, capped.
After it, one trial request may go; until that trial answers, the provider stays out of
rotation for everyone else. Bad credentials (401/403 from a provider with its own key) get a
long cooldown of their own: retrying a revoked key every few seconds only fills logs.

No I/O and no global clock: every method takes ``now`` (trio's clock in the app, a MockClock
in tests), so each transition is a unit test. The knobs (``HealthPolicy``) are config's:
``[health]`` sets the cooldowns.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

import attrs

from trio_balancer.config import HealthPolicy

__all__ = [
    "FailureKind",
    "HealthPolicy",
    "ProviderHealth",
    "Snapshot",
    "State",
]


class State(enum.Enum):
    HEALTHY = "healthy"
    COOLING = "cooling"
    HALF_OPEN = "half_open"


class FailureKind(enum.Enum):
    """Why an attempt failed, as far as health is concerned. Counted separately."""

    RATE_LIMITED = "rate_limited"  # 429
    OVERLOADED = "overloaded"  # 529, overloaded_error events
    AUTH = "auth"  # 401/403 with the provider's own key
    SERVER = "server"  # 5xx, 408/409, SSE api_error, cut streams
    CONNECT = "connect"  # connect, TLS, protocol failures
    TIMEOUT = "timeout"  # first byte, idle, total


@attrs.frozen
class Snapshot:
    """A read-only view of one provider's health, for routing, /providers and /status."""

    state: State
    cooling_until: float
    consecutive_failures: int
    last_error: str | None
    last_error_at: float | None
    counters: dict[str, int]


@attrs.define
class ProviderHealth:
    policy: HealthPolicy = attrs.Factory(HealthPolicy)
    rng: Callable[[], float] = random.random
    state: State = State.HEALTHY
    cooling_until: float = 0.0
    consecutive_failures: int = 0
    trial_in_flight: bool = False
    last_error: str | None = None
    last_error_at: float | None = None
    counters: dict[str, int] = attrs.Factory(
        lambda: {"requests": 0, "successes": 0, **{k.value: 0 for k in FailureKind}}
    )

    def _tick(self, now: float) -> None:
        if self.state is State.COOLING and now >= self.cooling_until:
            self.state = State.HALF_OPEN
            self.trial_in_flight = False

    def available(self, now: float) -> bool:
        """May a request be sent now? (HALF_OPEN: only if no trial is already out.)"""
        self._tick(now)
        if self.state is State.HEALTHY:
            return True
        return self.state is State.HALF_OPEN and not self.trial_in_flight

    def begin(self, now: float) -> None:
        """A request is being sent; in HALF_OPEN it is the trial."""
        self._tick(now)
        self.counters["requests"] += 1
        if self.state is State.HALF_OPEN:
            self.trial_in_flight = True

    def succeeded(self, now: float) -> None:
        self.counters["successes"] += 1
        self.state = State.HEALTHY
        self.consecutive_failures = 0
        self.trial_in_flight = False
        self.cooling_until = 0.0

    def failed(self, now: float, kind: FailureKind, message: str, retry_after: float | None = None) -> float:
        """Record a failure and start a cooldown; returns its length in seconds."""
        self.counters[kind.value] += 1
        self.consecutive_failures += 1
        self.last_error = message
        self.last_error_at = now
        self.trial_in_flight = False
        p = self.policy
        if kind is FailureKind.AUTH:
            cooldown = p.auth_cooldown_s
        elif retry_after is not None and retry_after > 0:
            cooldown = min(retry_after, p.max_retry_after_s)
        else:
            backoff = p.base_cooldown_s * 2 ** min(self.consecutive_failures - 1, 30)
            cooldown = min(backoff, p.max_cooldown_s) * (1 + p.jitter * (2 * self.rng() - 1))
        self.state = State.COOLING
        self.cooling_until = max(self.cooling_until, now + cooldown)
        return cooldown

    def apply_remote(self, now: float, *, cooling: bool, cooling_until: float, message: str | None) -> None:
        """Another instance saw this provider fail (or recover): take its word for it."""
        if cooling:
            self.state = State.COOLING
            self.cooling_until = max(self.cooling_until, cooling_until)
            self.trial_in_flight = False
            if message:
                self.last_error = message
                self.last_error_at = now
        elif self.state is not State.HEALTHY:
            self.reset()

    def abandoned(self) -> None:
        """The request ended without a verdict (client left): free the half-open trial."""
        self.trial_in_flight = False

    def reset(self) -> None:
        """Operator override: back to healthy now."""
        self.state = State.HEALTHY
        self.cooling_until = 0.0
        self.consecutive_failures = 0
        self.trial_in_flight = False

    def snapshot(self, now: float) -> Snapshot:
        self._tick(now)
        return Snapshot(
            state=self.state,
            cooling_until=self.cooling_until,
            consecutive_failures=self.consecutive_failures,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            counters=dict(self.counters),
        )
