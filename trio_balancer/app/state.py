"""What the app knows between requests: its config and everything made from it, its services.

One object, so that a config reload replaces every derived piece at once and nothing keeps an
old router or price table by accident. Handlers read it; only the lifespan and reload write it.
"""

from __future__ import annotations

import os
import socket
import uuid

import attrs

from trio_balancer.app.alerts import Notifier
from trio_balancer.app.budgets import BudgetKeeper
from trio_balancer.app.cluster import Cluster
from trio_balancer.app.metrics import Metrics
from trio_balancer.config import DEFAULT_MODELS, ClientKey, Config
from trio_balancer.ledger import Ledger
from trio_balancer.policy.auth import KeyRing
from trio_balancer.policy.health_history import HealthHistory
from trio_balancer.policy.limits import Limiter
from trio_balancer.policy.routing import Router, listed_models
from trio_balancer.policy.stats import RecentStats
from trio_balancer.protocol.dedup import ResponseCache
from trio_balancer.protocol.pricing import PriceTable
from trio_balancer.protocol.thinking import SignatureBook
from trio_balancer.upstream.providers import ProviderRuntime, Registry

__all__ = ["COUNT_CACHE_ITEMS", "COUNT_CACHE_TTL_S", "AppState", "new_instance_id"]

# Identical count_tokens requests are answered from here: Claude Code sends bursts of 40-50
# a second, mostly the same request, while a conversation sits still. Half a minute covers a
# burst and goes stale before the next turn's count matters; 1,024 answers of ~30 bytes each.
COUNT_CACHE_TTL_S = 30.0
COUNT_CACHE_ITEMS = 1024


@attrs.define(eq=False)
class AppState:
    """The config, what is derived from it, and the services; replaced together on reload."""

    config: Config
    router: Router
    prices: PriceTable
    keyring: KeyRing
    limiter: Limiter
    cache: ResponseCache
    count_cache: ResponseCache  # answers of /v1/messages/count_tokens, local to this instance
    known_models: set[str]  # model ids that may be metric labels
    budgets: BudgetKeeper  # outlives reloads: spend does not reset when the config changes
    keys_by_name: dict[str, ClientKey]  # the client keys, by the name records carry
    metrics: Metrics = attrs.Factory(Metrics)
    stats: RecentStats = attrs.Factory(RecentStats)
    health_history: HealthHistory = attrs.Factory(HealthHistory)  # for the console's health page
    # Which family signed each thinking block seen: outlives reloads (signatures do not change).
    thinking: SignatureBook = attrs.Factory(SignatureBook)
    registry: Registry | None = None  # from startup to shutdown
    ledger: Ledger | None = None
    cluster: Cluster | None = None
    notifier: Notifier | None = None  # the operator's webhook, from startup to shutdown
    started_at: float = 0.0  # trio clock

    @classmethod
    def from_config(cls, config: Config) -> AppState:
        return cls(
            config=config,
            router=Router(config),
            prices=PriceTable(config.prices),
            keyring=KeyRing(config.server.client_keys, config.server.admin_key_sha256),
            limiter=Limiter(config.server.max_concurrent),
            cache=ResponseCache(ttl_s=config.dedup.cache_ttl_s, max_bytes=config.dedup.cache_max_bytes),
            count_cache=ResponseCache(
                ttl_s=COUNT_CACHE_TTL_S, max_bytes=COUNT_CACHE_ITEMS * 1024, max_items=COUNT_CACHE_ITEMS
            ),
            known_models=known_models(config),
            budgets=BudgetKeeper(config.server.budget_timezone, new_instance_id(config.cluster.instance_id)),
            keys_by_name={k.name: k for k in config.server.client_keys},
        )

    def apply(self, new: Config) -> list[ProviderRuntime]:
        """Switch to ``new``; returns the providers it retires (to close once unused)."""
        assert self.registry is not None
        retired = self.registry.reload(new)
        self.config = new
        self.router = Router(new)
        self.prices = PriceTable(new.prices)
        self.known_models = known_models(new)
        self.keyring = KeyRing(new.server.client_keys, new.server.admin_key_sha256)
        self.keys_by_name = {k.name: k for k in new.server.client_keys}
        self.limiter.max_total = new.server.max_concurrent
        self.budgets.set_timezone(new.server.budget_timezone)
        return retired

    @property
    def budgets_wanted(self) -> bool:
        """Some client key has a budget (else the book is not synced)."""
        return any(k.has_budget for k in self.config.server.client_keys)


def new_instance_id(configured: str | None = None) -> str:
    """This process's id in the ledger: its name (the cluster's ``instance_id``, else host and
    pid) and a random part, since a restarted container has the same host name and pid 1, and
    its earlier run's records must read as another process's."""
    name = configured or f"{socket.gethostname()}-{os.getpid()}"
    return f"{name}-{uuid.uuid4().hex[:8]}"


def known_models(config: Config) -> set[str]:
    """Model ids that may be metric labels: what the config names, and the defaults."""
    known = set(listed_models(config)) | set(DEFAULT_MODELS)
    known.update(t.model for r in config.routes for t in r.targets if t.model)
    known.update(m for p in config.providers for m in p.models)
    return known
