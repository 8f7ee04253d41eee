"""Several balancer instances behaving as one, through Redis.

- Health: a provider's cooldown starting or ending on one instance is published on a Redis
  channel and applied by every other instance when it arrives (well within a second). Routing
  still reads local memory: the hot path never waits for Redis.
- Limits: per-client concurrency is a sorted set of leases with expiry times, taken and checked
  atomically by a Lua script together with a per-client token bucket; an instance renews the
  leases of its running requests, so a crashed instance's slots free themselves.
- Cache: completed responses are also stored in Redis (with the same TTL), so a retry that lands
  on another instance is still answered from the cache.
- Thinking signatures: which provider family signed each thinking block (``protocol/thinking.py``)
  is written to Redis in batches as the relays remember them, one key per signature with a
  week's expiry (conversations are resumed days later). A request carrying a signature this
  instance does not know asks Redis once (one MGET, at most ``RECALL_WAIT_S``, not at all while
  degraded; an absent answer is not asked again for a minute), so a conversation served by one
  instance continues on another with the same rules.
- Heartbeats: each instance writes a key with a short expiry; /status lists the ones alive.

Redis is reached with redis-py's synchronous client in worker threads. When a call fails the
instance says so once (log, metric, /status), falls back to its local state, and keeps
retrying in the background: requests keep flowing either way.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import trio

from trio_balancer.logging import get_logger
from trio_balancer.protocol.dedup import CachedResponse
from trio_balancer.protocol.thinking import SignatureBook
from trio_balancer.redaction import redact_url

__all__ = ["HEALTH_CHANNEL", "Cluster", "LimitRefused"]

log = get_logger("trio_balancer.app.cluster")

PREFIX = "trio-balancer"
HEALTH_CHANNEL = f"{PREFIX}:health"
HEARTBEAT_S = 1.0
HEARTBEAT_TTL_S = 5
OUTBOX = 1000  # publications waiting for Redis; beyond it the oldest news is dropped
THINKING_TTL_S = 7 * 24 * 3600  # how long Redis remembers whose a signature is
THINKING_BATCH = 500  # signatures written in one pipeline
# A request waits at most this for Redis to say whose its unknown signatures are (a local
# Redis answers in a millisecond; a slow one must not hold requests up).
RECALL_WAIT_S = 0.2

# Leases and a token bucket, atomically. Returns {0, 0} when taken, {1, 1} when the client is at
# its concurrency limit, {2, seconds} when it is out of requests for now.
_ACQUIRE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local maxc = tonumber(ARGV[4])
if maxc >= 0 and redis.call('ZCARD', KEYS[1]) >= maxc then return {1, 1} end
local rpm = tonumber(ARGV[5])
if rpm > 0 then
  local tokens = tonumber(redis.call('HGET', KEYS[2], 't') or rpm)
  local ts = tonumber(redis.call('HGET', KEYS[2], 'ts') or now)
  tokens = math.min(rpm, tokens + (now - ts) * rpm / 60)
  if tokens < 1 then return {2, math.ceil((1 - tokens) * 60 / rpm)} end
  redis.call('HSET', KEYS[2], 't', tostring(tokens - 1), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
if maxc >= 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('EXPIRE', KEYS[1], 3600)
end
return {0, 0}
"""


class LimitRefused(Exception):
    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason  # "concurrency" | "rate"
        self.retry_after = retry_after


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Cluster:
    def __init__(
        self,
        url: str,
        *,
        instance_id: str | None = None,
        lease_ttl_s: float = 30.0,
        apply_health: Callable[[dict[str, Any]], None] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        thinking: SignatureBook | None = None,
    ) -> None:
        import redis

        self.url = url
        self.instance_id = instance_id or default_instance_id()
        self.lease_ttl_s = lease_ttl_s
        self._redis = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=5
        )
        self._apply_health = apply_health or (lambda _m: None)
        self._status = status or dict
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[str, Any]](OUTBOX)
        self._leases: dict[str, str] = {}  # lease id -> client, for renewal
        self._book = thinking
        self._thinking_news = trio.Event()  # set when the book has fresh entries to write
        if thinking is not None:
            thinking.on_fresh = self._thinking_came
        self.degraded = True  # until the first successful call
        self.instances: list[dict[str, Any]] = []
        self.applied = 0  # health messages from other instances applied here

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import redis

        try:
            await self._call(self._redis.ping)
        except (redis.RedisError, OSError) as exc:  # start anyway: local state until Redis answers
            log.error("cluster.degraded", redis=redact_url(self.url), error=f"{type(exc).__name__}: {exc}")
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._subscriber)
                nursery.start_soon(self._publisher)
                if self._book is not None:
                    nursery.start_soon(self._share_thinking, self._book)
        finally:
            with trio.CancelScope(shield=True), suppress(Exception):  # closing must not fail the stop
                await trio.to_thread.run_sync(self._redis.close)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One Redis call in a thread; marks the instance degraded (once) when it fails."""
        import redis

        try:
            result = await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        except (redis.RedisError, OSError) as exc:
            if not self.degraded:
                log.error(
                    "cluster.degraded", redis=redact_url(self.url), error=f"{type(exc).__name__}: {exc}"
                )
            self.degraded = True
            raise
        if self.degraded:
            log.info("cluster.connected", redis=redact_url(self.url), instance=self.instance_id)
            self.degraded = False
        return result

    async def _heartbeats(self) -> None:
        import redis

        key = f"{PREFIX}:instance:{self.instance_id}"
        while True:
            try:
                beat = json.dumps({"instance": self.instance_id, "time": time.time(), **self._status()})
                await self._call(partial(self._redis.set, key, beat, ex=HEARTBEAT_TTL_S))
                await self._call(self._renew_leases)
                self.instances = await self._call(self._list_instances)
            except (redis.RedisError, OSError):
                pass
            await trio.sleep(HEARTBEAT_S)

    def _list_instances(self) -> list[dict[str, Any]]:
        keys = sorted(self._redis.scan_iter(f"{PREFIX}:instance:*", count=100))
        values = self._redis.mget(keys) if keys else []
        now = time.time()
        out = []
        for raw in values:
            if raw:
                item = json.loads(raw)
                item["last_heartbeat_s"] = round(now - item.pop("time", now), 2)
                out.append(item)
        return out

    # -- health ------------------------------------------------------------------------------

    def publish_health(self, message: dict[str, Any]) -> None:
        """Queue a health transition for every other instance; never waits."""
        self._post("health", {**message, "instance": self.instance_id})

    def _post(self, kind: str, payload: Any) -> None:
        try:
            self._out_send.send_nowait((kind, payload))
        except trio.WouldBlock:  # Redis has been away long: the oldest news matters least
            try:
                self._out_recv.receive_nowait()
                self._out_send.send_nowait((kind, payload))
            except (trio.WouldBlock, trio.EndOfChannel):
                pass

    async def _publisher(self) -> None:
        import redis

        async for kind, payload in self._out_recv:
            try:
                if kind == "health":
                    await self._call(self._redis.publish, HEALTH_CHANNEL, json.dumps(payload))
                elif kind == "cache":
                    key, value, ttl = payload
                    await self._call(lambda k=key, v=value, t=ttl: self._redis.set(k, v, px=int(t * 1000)))
            except (redis.RedisError, OSError):
                await trio.sleep(0.2)

    async def _subscriber(self) -> None:
        import redis

        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                await self._call(pubsub.subscribe, HEALTH_CHANNEL)
                while True:
                    message = await self._call(pubsub.get_message, True, 1.0)
                    if message and message.get("type") == "message":
                        data = json.loads(message["data"])
                        if data.get("instance") != self.instance_id:
                            self._apply_health(data)
                            self.applied += 1
            except (redis.RedisError, OSError, ValueError):
                await trio.sleep(1.0)
            finally:
                with trio.CancelScope(shield=True), suppress(Exception):
                    await trio.to_thread.run_sync(pubsub.close)

    # -- thinking signatures -----------------------------------------------------------------

    def _thinking_came(self) -> None:
        self._thinking_news.set()

    async def _share_thinking(self, book: SignatureBook) -> None:
        """Write what the book learned, in batches, as soon as it learns it (best effort: a
        batch Redis refuses is lost, and the signatures it held fall back to the default)."""
        import redis

        while True:
            await self._thinking_news.wait()
            self._thinking_news = trio.Event()
            while batch := book.take_fresh(THINKING_BATCH):
                try:
                    await self._call(self._write_thinking, batch)
                except (redis.RedisError, OSError):
                    await trio.sleep(0.2)

    def _write_thinking(self, batch: list[tuple[bytes, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, family in batch:
            pipe.set(f"{PREFIX}:thinking:{key.hex()}", family, ex=THINKING_TTL_S)
        pipe.execute()

    async def recall_thinking(self, signatures: list[str]) -> None:
        """Learn from Redis whose the signatures this instance does not know are."""
        import redis

        book = self._book
        if book is None or self.degraded or not signatures:
            return
        now = trio.current_time()
        keys = book.unknown(signatures, now)
        if not keys:
            return
        with trio.move_on_after(RECALL_WAIT_S):
            try:
                names = [f"{PREFIX}:thinking:{k.hex()}" for k in keys]
                values = await self._call(self._redis.mget, names)
            except (redis.RedisError, OSError):
                return
            if not isinstance(values, list) or len(values) != len(keys):
                return  # not what MGET answers: a Redis (or proxy) to trust for nothing
            for key, value in zip(keys, values, strict=True):
                if isinstance(value, bytes | str) and value:
                    book.learn(key, value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
            book.checked(keys, now)

    # -- limits ------------------------------------------------------------------------------

    async def acquire(self, client: str, *, max_concurrent: int | None, per_minute: int | None) -> str:
        """Take a lease for ``client`` across every instance; raises LimitRefused, or a Redis error."""
        lease = uuid.uuid4().hex
        now = time.time()
        keys = [f"{PREFIX}:leases:{client}", f"{PREFIX}:bucket:{client}"]
        args: list[str | float | int] = [
            now,
            lease,
            now + self.lease_ttl_s,
            -1 if max_concurrent is None else max_concurrent,
            per_minute or 0,
        ]
        code, value = await self._call(lambda: self._acquire(keys=keys, args=args))
        if code == 1:
            raise LimitRefused("concurrency", int(value))
        if code == 2:
            raise LimitRefused("rate", int(value))
        if max_concurrent is not None:
            self._leases[lease] = client
        return lease

    async def release(self, client: str, lease: str) -> None:
        import redis

        if self._leases.pop(lease, None) is None:
            return
        with suppress(redis.RedisError, OSError):  # if Redis is away, the lease expires by itself
            await self._call(self._redis.zrem, f"{PREFIX}:leases:{client}", lease)

    def _renew_leases(self) -> None:
        if not self._leases:
            return
        expiry = time.time() + self.lease_ttl_s
        pipe = self._redis.pipeline(transaction=False)
        for lease, client in list(self._leases.items()):
            pipe.zadd(f"{PREFIX}:leases:{client}", {lease: expiry}, xx=True)
        pipe.execute()

    # -- shared cache ------------------------------------------------------------------------

    async def cache_get(self, key: str) -> CachedResponse | None:
        import redis

        try:
            raw = await self._call(self._redis.get, f"{PREFIX}:cache:{key}")
        except (redis.RedisError, OSError):
            return None
        if not raw:
            return None
        d = json.loads(raw)
        return CachedResponse(
            status=d["status"],
            headers=[(base64.b64decode(n), base64.b64decode(v)) for n, v in d["headers"]],
            chunks=(base64.b64decode(d["body"]),),
            sse=d["sse"],
            size=d["size"],
            expires=trio.current_time() + d["ttl"],
            provider=d.get("provider"),
            upstream_model=d.get("upstream_model"),
        )

    def cache_put(self, key: str, cached: CachedResponse, ttl_s: float) -> None:
        value = json.dumps(
            {
                "status": cached.status,
                "headers": [
                    (base64.b64encode(n).decode(), base64.b64encode(v).decode()) for n, v in cached.headers
                ],
                "body": base64.b64encode(b"".join(cached.chunks)).decode(),
                "sse": cached.sse,
                "size": cached.size,
                "ttl": ttl_s,
                "provider": cached.provider,
                "upstream_model": cached.upstream_model,
            }
        )
        self._post("cache", (f"{PREFIX}:cache:{key}", value, ttl_s))

    def view(self) -> dict[str, Any]:
        return {
            "instance": self.instance_id,
            "redis": redact_url(self.url),
            "degraded": self.degraded,
            "instances": self.instances,
            "health_updates_applied": self.applied,
        }
