"""The provider health state machine, driven by an explicit clock."""

from __future__ import annotations

import pytest

from trio_balancer.policy.health import FailureKind, HealthPolicy, ProviderHealth, State


def health(**policy: float) -> ProviderHealth:
    return ProviderHealth(policy=HealthPolicy(**policy), rng=lambda: 0.5)  # rng 0.5: no jitter


class TestTransitions:
    def test_starts_healthy(self) -> None:
        h = health()
        assert h.available(0.0) and h.state is State.HEALTHY

    def test_failure_cools_then_half_open_then_healthy(self) -> None:
        h = health(base_cooldown_s=2.0)
        assert h.failed(10.0, FailureKind.SERVER, "HTTP 500") == 2.0
        assert h.state is State.COOLING and not h.available(11.9)
        assert h.available(12.0) and h.state is State.HALF_OPEN
        h.begin(12.0)
        assert not h.available(12.1)  # one trial at a time
        h.succeeded(12.5)
        assert h.state is State.HEALTHY and h.consecutive_failures == 0 and h.available(12.5)

    def test_failed_trial_backs_off_further(self) -> None:
        h = health(base_cooldown_s=1.0)
        lengths = []
        now = 0.0
        for _ in range(5):
            lengths.append(h.failed(now, FailureKind.SERVER, "x"))
            now = h.cooling_until
            assert h.available(now)
            h.begin(now)
        assert lengths == [1.0, 2.0, 4.0, 8.0, 16.0]

    def test_backoff_is_capped(self) -> None:
        h = health(base_cooldown_s=1.0, max_cooldown_s=30.0)
        for _ in range(40):
            last = h.failed(0.0, FailureKind.SERVER, "x")
        assert last == 30.0

    @pytest.mark.parametrize("rng", [0.0, 1.0])
    def test_jitter_bounds(self, rng: float) -> None:
        h = ProviderHealth(policy=HealthPolicy(base_cooldown_s=10.0, jitter=0.2), rng=lambda: rng)
        assert h.failed(0.0, FailureKind.SERVER, "x") == pytest.approx(8.0 if rng == 0.0 else 12.0)

    def test_retry_after_is_honoured_and_capped(self) -> None:
        h = health(max_retry_after_s=120.0)
        assert h.failed(0.0, FailureKind.RATE_LIMITED, "429", retry_after=37.0) == 37.0
        assert h.failed(0.0, FailureKind.RATE_LIMITED, "429", retry_after=9999.0) == 120.0

    def test_auth_failure_long_cooldown(self) -> None:
        h = health(auth_cooldown_s=600.0)
        assert h.failed(0.0, FailureKind.AUTH, "401", retry_after=1.0) == 600.0

    def test_counters_separate_kinds(self) -> None:
        h = health()
        h.begin(0)
        h.failed(0, FailureKind.RATE_LIMITED, "a")
        h.failed(0, FailureKind.OVERLOADED, "b")
        h.failed(0, FailureKind.AUTH, "c")
        h.succeeded(0)
        snap = h.snapshot(0)
        assert snap.counters["rate_limited"] == 1 and snap.counters["overloaded"] == 1
        assert snap.counters["auth"] == 1 and snap.counters["server"] == 0
        assert snap.counters["requests"] == 1 and snap.counters["successes"] == 1
        assert snap.last_error == "c"

    def test_abandoned_trial_frees_half_open(self) -> None:
        h = health(base_cooldown_s=1.0)
        h.failed(0, FailureKind.SERVER, "x")
        h.begin(1.0)
        assert not h.available(1.0)
        h.abandoned()
        assert h.available(1.0)

    def test_reset(self) -> None:
        h = health()
        h.failed(0, FailureKind.AUTH, "x")
        h.reset()
        assert h.available(0.1) and h.state is State.HEALTHY

    def test_shorter_retry_after_does_not_shorten_a_cooldown(self) -> None:
        h = health()
        h.failed(0.0, FailureKind.RATE_LIMITED, "x", retry_after=60)
        h.failed(1.0, FailureKind.RATE_LIMITED, "x", retry_after=2)
        assert h.cooling_until == 60.0
