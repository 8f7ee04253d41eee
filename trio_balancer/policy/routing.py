"""Pure routing: which providers may serve a model, and in what order to try them.

No I/O: the caller passes the clock reading and each provider's health, rate-limit and
latency state (plain objects), and gets an ordered list of attempts. The order is:

1. the route's targets in strategy order (priority, round robin, weighted, lowest latency),
   with a sticky session's provider first;
2. of those, the ones that may take a request now and are not about to hit a rate limit, then
   the ones that are (they may still answer; a 429 costs us one failover, not the client);
3. last, the cooling provider that recovers soonest: tried only when everything before it
   failed, because a provider that recently failed beats an error the client can see.

Which route: :func:`decide`, the first whose model glob and ``when`` conditions
(``policy/conditions.py``) all hold, with what matched and why each earlier route did not.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Protocol

import attrs

from trio_balancer.config import Config, ProviderConfig, Route, Target
from trio_balancer.errors import NotFound
from trio_balancer.policy.conditions import check_when
from trio_balancer.policy.health import ProviderHealth
from trio_balancer.policy.ratelimits import RateLimitState
from trio_balancer.protocol.request_facts import RequestFacts

__all__ = [
    "IMPLICIT_LABEL",
    "Attempt",
    "Decision",
    "Ewma",
    "ProviderView",
    "Router",
    "decide",
    "find_route",
    "listed_models",
    "route_label",
]

# A little exploration keeps the latency strategy's numbers fresh for providers it avoids.
LATENCY_EXPLORE = 0.05
STICKY_TTL_S = 3600.0
STICKY_MAX = 10_000
# What the decision calls the route of a config without [[routes]] (every provider).
IMPLICIT_LABEL = "default"


@attrs.frozen
class Attempt:
    """One upstream to try: the provider and the model name to send it."""

    provider: ProviderConfig
    model: str
    # The target's window: as declared (0: not) until policy/plan.py resolve_windows gives it
    # the provider's or the known model's; the flight reads the resolved one.
    context_window: int = 0


@attrs.define
class Ewma:
    """A decaying average (of time to first byte, in seconds)."""

    value: float | None = None
    alpha: float = 0.3

    def observe(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


class ProviderView(Protocol):
    @property
    def health(self) -> ProviderHealth: ...
    @property
    def limits(self) -> RateLimitState: ...
    @property
    def latency(self) -> Ewma: ...


@attrs.frozen
class Decision:
    """The route a request takes, and why: what of it matched, why each earlier one did not."""

    route: Route
    label: str  # the route's name, else its index in [[routes]]
    matched: tuple[str, ...]  # ("match claude-*", "thinking", ...)
    passed_over: tuple[tuple[str, str], ...] = ()  # (label, why not) for each earlier route

    @property
    def why(self) -> str:
        return "; ".join(self.matched)


def route_label(route: Route, index: int) -> str:
    return route.name if route.name is not None else str(index)


def decide(config: Config, facts: RequestFacts) -> Decision | None:
    """The first route whose glob matches the model (case-sensitive, like model ids) and whose
    ``when`` conditions all hold; None if there is none."""
    passed: list[tuple[str, str]] = []
    for i, route in enumerate(config.routes):
        label = route_label(route, i)
        if not fnmatchcase(facts.model, route.match):
            passed.append((label, f"model {facts.model!r} does not match {route.match!r}"))
            continue
        verdict = check_when(route.when, facts)
        if not verdict.holds:
            passed.append((label, "; ".join(verdict.failed)))
            continue
        return Decision(route, label, (f"match {route.match}", *verdict.matched), tuple(passed))
    return None


def find_route(config: Config, model: str) -> Route | None:
    """The first route whose glob matches ``model``, whatever its conditions."""
    for route in config.routes:
        if fnmatchcase(model, route.match):
            return route
    return None


def listed_models(config: Config) -> list[str]:
    """Model ids to show on GET /v1/models: providers' ``models`` and literal route matches."""
    seen: dict[str, None] = {}
    for route in config.routes:
        if not any(c in route.match for c in "*?["):
            seen[route.match] = None
    for provider in config.providers:
        for model in provider.models:
            if not config.routes or find_route(config, model) is not None:
                seen[model] = None
    return list(seen)


class Router:
    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._rr: dict[int, int] = {}
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._implicit = Route(
            match="*",
            targets=tuple(Target(p.name) for p in config.providers),
            strategy=config.routing.strategy,
            sticky=config.routing.sticky,
        )

    def route_for(self, model: str) -> Route:
        """The first route whose glob matches ``model``, whatever its conditions."""
        if not self.config.routes:
            return self._implicit
        route = find_route(self.config, model)
        if route is None:
            raise NotFound(f"no route serves model {model!r}")
        return route

    def decide(self, facts: RequestFacts) -> Decision:
        """The route of this request (see :func:`decide`); NotFound when none takes it."""
        if not self.config.routes:
            return Decision(self._implicit, IMPLICIT_LABEL, ("no [[routes]]: every provider",))
        decision = decide(self.config, facts)
        if decision is None:
            if find_route(self.config, facts.model) is None:
                raise NotFound(f"no route serves model {facts.model!r}")
            raise NotFound(f"no route takes this request for model {facts.model!r} (its conditions)")
        return decision

    def plan(
        self,
        model: str,
        providers: Mapping[str, ProviderView],
        *,
        now: float,
        session: str | None = None,
        need_tokens: int = 0,
        route: Route | None = None,
    ) -> list[Attempt]:
        """The attempts for ``model`` on ``route`` (default: the first whose glob matches)."""
        if route is None:
            route = self.route_for(model)
        order = self._strategy_order(route, providers)
        if route.sticky and session is not None:
            order = self._sticky_first(order, session, now)
        ready: list[Target] = []
        pressed: list[Target] = []
        cooling: list[Target] = []
        for t in order:
            view = providers[t.provider]
            if not view.health.available(now):
                cooling.append(t)
            elif view.limits.pressed(now, need_tokens):
                pressed.append(t)
            else:
                ready.append(t)
        chosen = ready + pressed
        if cooling:
            chosen.append(min(cooling, key=lambda t: providers[t.provider].health.cooling_until))
        by_name = {p.name: p for p in self.config.providers}
        return [Attempt(by_name[t.provider], t.model or model, t.context_window) for t in chosen]

    def remember(self, session: str, provider: str, now: float) -> None:
        """The provider that served a sticky session; later requests of it go there first."""
        self._sessions[session] = (provider, now + STICKY_TTL_S)
        self._sessions.move_to_end(session)
        while len(self._sessions) > STICKY_MAX:
            self._sessions.popitem(last=False)

    def _sticky_first(self, order: list[Target], session: str, now: float) -> list[Target]:
        entry = self._sessions.get(session)
        if entry is None:
            return order
        provider, expires = entry
        if now >= expires:
            del self._sessions[session]
            return order
        first = [t for t in order if t.provider == provider]
        return first + [t for t in order if t.provider != provider]

    def _strategy_order(self, route: Route, providers: Mapping[str, ProviderView]) -> list[Target]:
        targets: Sequence[Target] = route.targets
        if route.strategy == "round_robin":
            n = self._rr.get(id(route), 0)  # per route: two may share a glob
            self._rr[id(route)] = n + 1
            k = n % len(targets)
            return [*targets[k:], *targets[:k]]
        if route.strategy == "weighted":
            # Efraimidis-Spirakis: a weighted random order, one draw per target.
            def key(t: Target) -> float:
                return self._rng.random() ** (1.0 / t.weight) if t.weight > 0 else -1.0

            return sorted(targets, key=key, reverse=True)
        if route.strategy == "latency":
            # Unmeasured providers first (measure them), then fastest first.
            ordered = sorted(targets, key=lambda t: providers[t.provider].latency.value or 0.0)
            if len(ordered) > 1 and self._rng.random() < LATENCY_EXPLORE:
                i = self._rng.randrange(1, len(ordered))
                ordered.insert(0, ordered.pop(i))
            return ordered
        return list(targets)
