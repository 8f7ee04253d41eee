"""Per-client and global limits. Pure, clock passed in.

Concurrency is counted in leases (taken when a request starts, returned when it ends);
request rate is a token bucket per client, refilled continuously, so a client that used its
minute's allowance gets a precise ``retry-after`` instead of waiting for a window boundary.
"""

from __future__ import annotations

import math

import attrs

from trio_balancer.errors import RateLimited

__all__ = ["Bucket", "Limiter"]


@attrs.define
class Bucket:
    capacity: float
    tokens: float
    refill_per_s: float
    updated: float

    def take(self, now: float) -> float | None:
        """Take one token; None if taken, else seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.refill_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.refill_per_s


class Limiter:
    def __init__(self, max_total: int | None = None) -> None:
        self.max_total = max_total
        self.total = 0
        self.active: dict[str, int] = {}
        self._buckets: dict[str, Bucket] = {}

    def acquire(self, client: str, now: float, *, max_concurrent: int | None, per_minute: int | None) -> None:
        """Start a request for ``client``, or raise RateLimited with a retry-after."""
        if self.max_total is not None and self.total >= self.max_total:
            raise RateLimited(
                "the balancer is at its limit of concurrent requests", headers={"retry-after": "1"}
            )
        if max_concurrent is not None and self.active.get(client, 0) >= max_concurrent:
            raise RateLimited(
                f"client {client!r} is at its limit of {max_concurrent} concurrent requests",
                headers={"retry-after": "1"},
            )
        if per_minute is not None:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = Bucket(per_minute, per_minute, per_minute / 60.0, now)
            wait = bucket.take(now)
            if wait is not None:
                raise RateLimited(
                    f"client {client!r} is over its limit of {per_minute} requests per minute",
                    headers={"retry-after": str(max(1, math.ceil(wait)))},
                )
        self.total += 1
        self.active[client] = self.active.get(client, 0) + 1

    def release(self, client: str) -> None:
        self.total -= 1
        left = self.active.get(client, 0) - 1
        if left > 0:
            self.active[client] = left
        else:
            self.active.pop(client, None)
