"""Pure routing: which providers may serve a model, and in what order.

No I/O and no clock: the caller passes the config (and, once health tracking exists, the
health view), and gets back an ordered list of attempts.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import attrs

from .config import Config, ProviderConfig, Route
from .errors import NotFound

__all__ = ["Attempt", "find_route", "listed_models", "plan"]


@attrs.frozen
class Attempt:
    """One upstream to try: the provider and the model name to send it."""

    provider: ProviderConfig
    model: str


def find_route(config: Config, model: str) -> Route | None:
    """The first route whose glob matches ``model`` (case-sensitive, like model ids)."""
    for route in config.routes:
        if fnmatchcase(model, route.match):
            return route
    return None


def plan(config: Config, model: str) -> list[Attempt]:
    """The attempts for ``model`` in order; raises :class:`NotFound` when nothing serves it."""
    if not config.routes:
        return [Attempt(p, model) for p in config.providers]
    route = find_route(config, model)
    if route is None:
        raise NotFound(f"no route serves model {model!r}")
    return [Attempt(config.provider(t.provider), t.model or model) for t in route.targets]


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
