"""Each configured provider at run time: its config, pooled client, health and live readings.

The registry is what a config reload swaps. A provider whose config did not change keeps its
runtime (client, health, latency) across the reload; one that changed or disappeared is
retired: flights that already hold it finish on it, and its client is closed when the last
of them lets go.
"""

from __future__ import annotations

import random
import ssl

import attrs
import httpx
import trio

from trio_balancer.config import Config, ProviderConfig
from trio_balancer.policy.health import ProviderHealth
from trio_balancer.policy.ratelimits import RateLimitState
from trio_balancer.policy.routing import Ewma
from trio_balancer.upstream.families import Family, make_family

__all__ = ["MAX_SHARDS", "SHARD_CONNECTIONS", "ProviderRuntime", "Registry", "make_client", "make_clients"]


@attrs.define(eq=False)
class ProviderRuntime:
    config: ProviderConfig
    clients: list[httpx.AsyncClient]  # pool shards (see SHARD_CONNECTIONS)
    health: ProviderHealth
    family: Family  # how its requests are sent (signed, converted...): upstream/families.py
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
            family=make_family(provider),
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


# httpcore's pool scans every connection it holds (is_idle, has_expired: a poll() each) on
# every request start and response close, so its cost grows with the pool: at 500 concurrent
# streams that scan was 38 % of the balancer's CPU (profile in bench/RESULTS.md). A provider's
# connections are therefore spread over several small pools ("shards") of this many at most.
# Each shard holds about this many connections, and there are at most MAX_SHARDS of them.
SHARD_CONNECTIONS = 64
MAX_SHARDS = 8


def make_clients(provider: ProviderConfig) -> list[httpx.AsyncClient]:
    """The pooled clients for one provider, sharing one TLS context (building one costs ~0.7 MiB)."""
    shards = min(MAX_SHARDS, max(1, -(-provider.max_connections // SHARD_CONNECTIONS)))
    per_shard = -(-provider.max_connections // shards)
    keepalive = -(-provider.max_keepalive // shards) if provider.max_keepalive else 0
    tls = httpx.create_ssl_context()
    return [
        make_client(provider, max_connections=per_shard, max_keepalive=keepalive, tls=tls)
        for _ in range(shards)
    ]


def make_client(
    provider: ProviderConfig,
    *,
    max_connections: int | None = None,
    max_keepalive: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """One pooled client for a provider; the lifespan task owns and closes it."""
    t = provider.timeouts
    client = httpx.AsyncClient(
        verify=tls if tls is not None else True,
        # read=None: the gap between stream chunks and the whole response are bounded by our
        # own trio deadlines (idle, total), which know whether a response has started.
        timeout=httpx.Timeout(connect=t.connect, read=None, write=60.0, pool=t.connect),
        limits=httpx.Limits(
            max_connections=provider.max_connections if max_connections is None else max_connections,
            max_keepalive_connections=provider.max_keepalive if max_keepalive is None else max_keepalive,
            keepalive_expiry=provider.keepalive_s,
        ),
        trust_env=False,
        follow_redirects=False,
    )
    # httpx would send its own user agent and accept header when the client sent none: a
    # proxy should send what the client sent and nothing it made up.
    for name in ("user-agent", "accept"):
        del client.headers[name]
    return client
