"""Pure routing: strategy order, health filtering, rate-limit steering, sticky sessions."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from trio_balancer.config import Config, parse_config
from trio_balancer.errors import NotFound
from trio_balancer.policy.health import FailureKind
from trio_balancer.policy.ratelimits import Reading
from trio_balancer.policy.routing import Ewma, Router

from .helpers import View, views


def config(
    strategy: str = "priority", sticky: bool = False, weights: tuple[float, ...] = (1, 1, 1), **route: Any
) -> Config:
    return parse_config(
        {
            "providers": [
                {"name": n, "kind": "anthropic", "base_url": "http://x", "api_key": "k"} for n in "abc"
            ],
            "routes": [
                {
                    "match": "claude-*",
                    "strategy": strategy,
                    "sticky": sticky,
                    "targets": [{"provider": n, "weight": w} for n, w in zip("abc", weights, strict=True)],
                    **route,
                }
            ],
        }
    )


def names(router: Router, v: dict[str, View], now: float = 0.0, **kw: Any) -> list[str]:
    return [a.provider.name for a in router.plan("claude-x", v, now=now, **kw)]


class TestStrategies:
    def test_priority_keeps_order(self) -> None:
        c = config()
        assert names(Router(c), views(c)) == ["a", "b", "c"]

    def test_round_robin_rotates(self) -> None:
        c = config("round_robin")
        r, v = Router(c), views(c)
        assert [names(r, v)[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
        assert names(r, v) == ["a", "b", "c"]

    def test_weighted_follows_weights(self) -> None:
        c = config("weighted", weights=(6, 3, 1))
        r, v = Router(c, rng=random.Random(1)), views(c)
        firsts = Counter(names(r, v)[0] for _ in range(3000))
        assert firsts["a"] > firsts["b"] > firsts["c"] > 0
        assert 0.5 < firsts["a"] / 3000 < 0.7
        assert sorted(names(r, v)) == ["a", "b", "c"]  # every target stays a fallback

    def test_weight_zero_is_last_resort(self) -> None:
        c = config("weighted", weights=(0, 1, 1))
        r, v = Router(c, rng=random.Random(2)), views(c)
        assert all(names(r, v)[-1] == "a" for _ in range(100))

    def test_latency_prefers_fastest_and_explores(self) -> None:
        c = config("latency")
        r, v = Router(c, rng=random.Random(3)), views(c)
        v["a"].latency.observe(0.9)
        v["b"].latency.observe(0.1)
        v["c"].latency.observe(0.5)
        firsts = Counter(names(r, v)[0] for _ in range(2000))
        assert firsts.most_common(1)[0][0] == "b"
        assert firsts["a"] + firsts["c"] > 0  # a little exploration
        assert firsts["b"] > 0.9 * 2000

    def test_latency_measures_unknown_first(self) -> None:
        c = config("latency")
        r, v = Router(c, rng=random.Random(4)), views(c)
        v["a"].latency.observe(0.1)
        v["b"].latency.observe(0.2)
        assert names(r, v)[0] == "c"

    def test_ewma_decays(self) -> None:
        e = Ewma(alpha=0.5)
        e.observe(1.0)
        e.observe(0.0)
        assert e.value == 0.5


class TestHealthFiltering:
    def test_cooling_provider_skipped_but_kept_as_last_resort(self) -> None:
        c = config()
        r, v = Router(c), views(c)
        v["a"].health.failed(0.0, FailureKind.SERVER, "boom")
        assert names(r, v, now=0.1) == ["b", "c", "a"]

    def test_all_cooling_tries_the_soonest_to_recover(self) -> None:
        c = config()
        r, v = Router(c), views(c)
        v["a"].health.failed(0.0, FailureKind.SERVER, "x", retry_after=30)
        v["b"].health.failed(0.0, FailureKind.SERVER, "x", retry_after=5)
        v["c"].health.failed(0.0, FailureKind.SERVER, "x", retry_after=10)
        assert names(r, v, now=1.0) == ["b"]

    def test_half_open_allows_one_trial(self) -> None:
        c = config()
        r, v = Router(c), views(c)
        v["a"].health.failed(0.0, FailureKind.SERVER, "x", retry_after=1)
        assert names(r, v, now=2.0)[0] == "a"  # cooldown over: half-open, trial allowed
        v["a"].health.begin(2.0)
        assert names(r, v, now=2.1)[0] == "b"  # trial out: others go elsewhere

    def test_rate_limit_pressure_moves_provider_back(self) -> None:
        c = config()
        r, v = Router(c), views(c)
        v["a"].limits.update({"requests": Reading(remaining=0, limit=50, reset_at=10.0)})
        assert names(r, v, now=1.0) == ["b", "c", "a"]
        assert names(r, v, now=11.0) == ["a", "b", "c"]  # the window reset

    def test_token_pressure_depends_on_request_size(self) -> None:
        c = config()
        r, v = Router(c), views(c)
        v["a"].limits.update({"input-tokens": Reading(remaining=30_000, limit=1_000_000, reset_at=60.0)})
        assert names(r, v, now=0.0, need_tokens=1_000)[0] == "a"
        assert names(r, v, now=0.0, need_tokens=50_000)[0] == "b"


class TestSticky:
    def test_session_stays_on_its_provider(self) -> None:
        c = config("round_robin", sticky=True)
        r, v = Router(c), views(c)
        r.remember("session-1", "b", now=0.0)
        assert [names(r, v, session="session-1")[0] for _ in range(5)] == ["b"] * 5
        assert names(r, v, session="other")[0] != names(r, v, session="other")[0]

    def test_sticky_provider_unhealthy_moves_on(self) -> None:
        c = config(sticky=True)
        r, v = Router(c), views(c)
        r.remember("s", "b", now=0.0)
        v["b"].health.failed(0.0, FailureKind.OVERLOADED, "x")
        assert names(r, v, now=0.1, session="s") == ["a", "c", "b"]

    def test_sticky_expires(self) -> None:
        c = config(sticky=True)
        r, v = Router(c), views(c)
        r.remember("s", "c", now=0.0)
        assert names(r, v, now=10.0, session="s")[0] == "c"
        assert names(r, v, now=4000.0, session="s")[0] == "a"

    def test_not_sticky_ignores_sessions(self) -> None:
        c = config()
        r, v = Router(c), views(c)
        r.remember("s", "c", now=0.0)
        assert names(r, v, session="s")[0] == "a"


def test_no_route_is_not_found() -> None:
    c = config()
    with pytest.raises(NotFound, match="gpt-4o"):
        Router(c).plan("gpt-4o", views(c), now=0.0)


def test_implicit_route_uses_routing_defaults() -> None:
    c = parse_config(
        {
            "routing": {"strategy": "round_robin"},
            "providers": [
                {"name": n, "kind": "anthropic", "base_url": "http://x", "api_key": "k"} for n in "ab"
            ],
        }
    )
    r, v = Router(c), views(c)
    assert [names(r, v)[0] for _ in range(4)] == ["a", "b", "a", "b"]
