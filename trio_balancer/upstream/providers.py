"""Each configured provider at run time: its config, pooled client, health and live readings.

The registry is what a config reload swaps. A provider whose config did not change keeps its
runtime (client, health, latency) across the reload; one that changed or disappeared is
retired: flights that already hold it finish on it, and its client is closed when the last
of them lets go.
"""

from __future__ import annotations

import random

import attrs
import httpx
import trio

from trio_balancer.config import Config, ProviderConfig
from trio_balancer.policy.health import ProviderHealth
from trio_balancer.policy.ratelimits import RateLimitState
from trio_balancer.policy.routing import Ewma
from trio_balancer.upstream.headers import make_clients

__all__ = ["ProviderRuntime", "Registry"]


@attrs.define(eq=False)
class ProviderRuntime:
    config: ProviderConfig
    clients: list[httpx.AsyncClient]  # pool shards (see upstream.SHARD_CONNECTIONS)
    health: ProviderHealth
    limits: RateLimitState = attrs.Factory(RateLimitState)
    latency: Ewma = attrs.Factory(Ewma)
    in_use: int = 0
    _unused: trio.Event = attrs.Factory(trio.Event)

    _next: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def client(self) -> httpx.AsyncClient:
        """The next pool shard, round robin."""
        clients = self.clients
        if len(clients) == 1:
            return clients[0]
        self._next = (self._next + 1) % len(clients)
        return clients[self._next]

    @client.setter
    def client(self, client: httpx.AsyncClient) -> None:
        """Replace every shard with one client (tests use an in-memory transport)."""
        self.clients = [client]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for client in self.clients:
                await client.aclose()

    @property
    def is_closed(self) -> bool:
        return all(c.is_closed for c in self.clients)

    def acquire(self) -> None:
        if self.in_use == 0:
            self._unused = trio.Event()
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        if self.in_use == 0:
            self._unused.set()

    async def close_when_unused(self) -> None:
        while self.in_use:
            await self._unused.wait()
        await self.aclose()


class Registry:
    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.config = config
        self.runtimes: dict[str, ProviderRuntime] = {p.name: self._make(p, config) for p in config.providers}

    def _make(self, provider: ProviderConfig, config: Config) -> ProviderRuntime:
        return ProviderRuntime(
            config=provider,
            clients=make_clients(provider),
            health=ProviderHealth(policy=config.health, rng=self._rng.random),
        )

    def reload(self, config: Config) -> list[ProviderRuntime]:
        """Switch to ``config``; returns the runtimes retired by the change."""
        old = self.runtimes
        new: dict[str, ProviderRuntime] = {}
        for p in config.providers:
            current = old.get(p.name)
            if current is not None and current.config == p:
                current.health.policy = config.health
                new[p.name] = current
            else:
                new[p.name] = self._make(p, config)
        self.config = config
        self.runtimes = new
        return [r for name, r in old.items() if new.get(name) is not r]

    async def aclose(self) -> None:
        for r in self.runtimes.values():
            await r.aclose()
