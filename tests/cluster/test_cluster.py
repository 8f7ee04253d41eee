"""Three balancer instances sharing one ledger (PostgreSQL) and one view of providers (Redis)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_balancer.config import parse_config
from trio_balancer.ledger import open_store
from trio_balancer.policy.auth import new_key

from ..fakes import (
    JSON_HEADERS,
    FakeUpstream,
    Pause,
    Received,
    Reply,
    anthropic_message,
    anthropic_text_events,
    error_reply,
    interleave,
)
from ..helpers import Balancer, assert_error, message_body, start_balancer, wait_until
from .servers import PgServer, RedisServer

KEY, KEY_SHA = new_key()
BODY = message_body(max_tokens=16, stream=True)
OVERLOADED = error_reply(529, "overloaded_error", "Overloaded", **{"retry-after": "60"})


def cluster_config(
    tmp: Path, name: str, pg: PgServer, redis: RedisServer, *ups: FakeUpstream, **server: Any
) -> dict[str, Any]:
    return {
        "server": {"client_keys": [{"name": "team", "sha256": KEY_SHA, "max_concurrent": 2}], **server},
        "ledger": {"url": pg.url, "spill_path": str(tmp / f"spill-{name}.sqlite3")},
        "cluster": {"redis_url": redis.url, "instance_id": name},
        "providers": [
            {"name": f"p{i}", "kind": "anthropic", "base_url": u.url, "api_key": "k"}
            for i, u in enumerate(ups)
        ],
    }


@pytest.fixture
async def cluster(
    nursery: trio.Nursery, tmp_path: Path, pg: PgServer, redis_srv: RedisServer
) -> AsyncIterator[Any]:
    """``await cluster(*upstreams, n=3)``: n instances sharing ``pg`` and ``redis_srv``."""
    made: list[Balancer] = []

    async def make(*ups: FakeUpstream, n: int = 3) -> list[Balancer]:
        out = []
        for name in "abc"[:n]:
            out.append(
                await start_balancer(
                    nursery, parse_config(cluster_config(tmp_path, name, pg, redis_srv, *ups))
                )
            )
        made.extend(out)
        return out

    yield make
    for b in made:
        await b.client.aclose()


async def post(b: Balancer, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    async with b.client.stream(
        "POST", "/v1/messages", json=body or BODY, headers={"x-api-key": KEY, **headers}
    ) as r:
        await r.aread()
    return r


def pg_ids(pg: PgServer) -> list[str]:
    store = open_store(pg.url)
    try:
        return [r["id"] for r in store.records(limit=100_000)]
    finally:
        store.close()


async def wait_for(predicate: Any, limit: float) -> None:
    """Poll state that lives in another server (HTTP, Redis): there is no event to wait on."""
    with trio.fail_after(limit):
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_three_instances_share_one_ledger(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    up = await FakeUpstream(
        lambda r: Reply(steps=interleave(anthropic_text_events([f"w{i}" for i in range(6)]), 0.02))
    ).start(nursery)
    a, b, c = await cluster(up)
    ids: list[str] = []

    async def one(inst: Balancer, i: int) -> None:
        r = await post(inst, {**BODY, "messages": [{"role": "user", "content": f"q{i}"}]})
        ids.append(r.headers["x-balancer-request-id"])

    async with trio.open_nursery() as n:
        for i in range(30):
            n.start_soon(one, (a, b, c)[i % 3], i)
    # An instance stopped mid-stream: its in-flight request is cut, and still recorded once.
    stop = trio.Event()
    async with trio.open_nursery() as own:
        d = await start_balancer(
            own, parse_config(cluster_config(tmp_path, "d", pg, redis_srv, up)), shutdown=stop.wait
        )
        async with (
            d.client,
            d.client.stream(
                "POST", "/v1/messages", json={**BODY, "max_tokens": 99}, headers={"x-api-key": KEY}
            ) as r,
            aclosing(r.aiter_raw()) as it,
        ):
            ids.append(r.headers["x-balancer-request-id"])
            async for _ in it:
                stop.set()  # graceful stop with the stream running: it is cut at the grace period
                break
    for inst in (a, b, c):
        await inst.wait_idle()
        assert inst.app.ledger is not None
        with trio.fail_after(5):
            await inst.app.ledger.wait_written(10)
    recorded = pg_ids(pg)
    assert sorted(recorded) == sorted(ids) and len(set(recorded)) == 31


async def test_a_provider_failing_on_one_instance_is_skipped_by_another(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    bad = await FakeUpstream(OVERLOADED).start(nursery)
    good = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    a, b, _ = await cluster(bad, good)
    await wait_for(lambda: _connected(a, b), 5)
    assert (await post(a, **{"x-balancer-no-dedup": "1"})).status_code == 200

    async def p0_on_b() -> dict[str, Any]:
        providers = (await b.client.get("/providers")).json()["providers"]
        return next(p for p in providers if p["name"] == "p0")  # type: ignore[no-any-return]

    async def b_knows() -> bool:
        return bool((await p0_on_b())["state"] == "cooling")

    await wait_for(b_knows, 5)
    # B has not sent a request yet: what it knows came from A, through Redis.
    assert "(on instance a)" in (await p0_on_b())["last_error"]
    assert b.app.cluster is not None and b.app.cluster.applied >= 1
    assert (await post(b, **{"x-balancer-no-dedup": "1"})).status_code == 200
    assert len(bad.received) == 1 and len(good.received) == 2  # B never tried the cooling provider


async def _connected(*insts: Balancer) -> bool:
    return all(
        i.app.cluster is not None and not i.app.cluster.degraded and i.app.cluster.applied >= 0 for i in insts
    )


async def test_concurrency_limit_holds_across_instances(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    events = anthropic_text_events([f"w{i}" for i in range(10)])
    hold = Pause()  # the first two streams stay open until the third was refused
    up = await FakeUpstream(lambda r: Reply(steps=[*events[:4], hold, *events[4:]])).start(nursery)
    a, b, c = await cluster(up)
    await wait_for(lambda: _connected(a, b, c), 5)
    codes: dict[str, int] = {}

    async def run(name: str, inst: Balancer) -> None:
        r = await post(inst, {**BODY, "messages": [{"role": "user", "content": name}]})
        codes[name] = r.status_code
        if r.status_code == 429:
            assert_error(r, 429, "rate_limit_error")
            assert r.headers["retry-after"]

    async with trio.open_nursery() as n:
        # In order, each once the one before holds its slot (its request reached the upstream).
        n.start_soon(run, "first", a)
        await up.wait_received(1)
        n.start_soon(run, "second", b)
        await up.wait_received(2)
        n.start_soon(run, "third", c)  # the client's 2 slots are taken on a and b
        await wait_until(lambda: "third" in codes or len(up.received) == 3)  # answered, or let through
        hold.release()
    assert codes == {"first": 200, "second": 200, "third": 429}
    # A client has its answer before the handler gives the slot back: wait for both handlers.
    await a.wait_idle()
    await b.wait_idle()
    assert (
        await post(c, {**BODY, "messages": [{"role": "user", "content": "later"}]})
    ).status_code == 200  # slots came back


async def test_redis_down_requests_flow_and_instances_say_so(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    a, b, _ = await cluster(up)
    await wait_for(lambda: _connected(a, b), 5)
    redis_srv.stop()
    for i in range(3):
        assert (
            await post(a, {**BODY, "messages": [{"role": "user", "content": f"r{i}"}]})
        ).status_code == 200

    async def degraded() -> bool:
        status = (await a.client.get("/status.json")).json()
        return bool(status["cluster"]["degraded"])

    await wait_for(degraded, 5)
    assert "trio_balancer_cluster_degraded 1.0" in (await a.client.get("/metrics")).text
    redis_srv.start()

    async def recovered() -> bool:
        return not (await a.client.get("/status.json")).json()["cluster"]["degraded"]

    await wait_for(recovered, 10)


async def test_postgres_down_records_spill_and_drain(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    (a,) = await cluster(up, n=1)
    ids = [
        (await post(a, {**BODY, "messages": [{"role": "user", "content": "before"}]})).headers[
            "x-balancer-request-id"
        ]
    ]
    await a.wait_idle()
    assert a.app.ledger is not None
    with trio.fail_after(5):
        await a.app.ledger.wait_written(1)
    await trio.to_thread.run_sync(pg.stop)
    for i in range(5):
        r = await post(a, {**BODY, "messages": [{"role": "user", "content": f"during {i}"}]})
        assert r.status_code == 200
        ids.append(r.headers["x-balancer-request-id"])
    await a.wait_idle()
    with trio.fail_after(10):
        await a.app.ledger.wait_written(6)
    assert a.app.ledger.spilled == 5 and a.app.ledger.degraded
    status = (await a.client.get("/status.json")).json()
    assert status["ledger"]["spilled"] == 5
    await trio.to_thread.run_sync(pg.start)

    async def drained() -> bool:
        assert a.app.ledger is not None
        return a.app.ledger.spilled == 0

    await wait_for(drained, 15)
    assert sorted(pg_ids(pg)) == sorted(ids)  # none lost, none twice


async def test_usage_queries_do_not_take_the_schema_lock(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    """Each /usage query used to migrate, under the schema table's EXCLUSIVE lock: while an
    instance held it (starting, migrating), every report on every instance waited for it."""
    import psycopg

    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    (a,) = await cluster(up, n=1)
    rid = (await post(a)).headers["x-balancer-request-id"]
    await a.wait_idle()
    assert a.app.ledger is not None
    with trio.fail_after(5):
        await a.app.ledger.wait_written(1)
    holder = await trio.to_thread.run_sync(psycopg.connect, pg.url)
    try:
        await trio.to_thread.run_sync(holder.execute, "LOCK TABLE trio_balancer_schema IN EXCLUSIVE MODE")
        with trio.fail_after(10):  # a query that waited for the lock would wait 30 s, then fail
            for _ in range(3):
                totals = (await a.client.get("/usage")).json()["totals"]
                assert totals[0]["requests"] == 1
                page = (await a.client.get("/usage/requests")).json()["records"]
                assert [r["id"] for r in page] == [rid]
    finally:
        await trio.to_thread.run_sync(holder.rollback)
        await trio.to_thread.run_sync(holder.close)


async def test_usage_queries_outlive_a_postgres_restart(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    """The queries' kept connection dies with the server; the next query opens another."""
    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    (a,) = await cluster(up, n=1)
    await post(a)
    await a.wait_idle()
    assert a.app.ledger is not None
    with trio.fail_after(5):
        await a.app.ledger.wait_written(1)
    assert (await a.client.get("/usage")).json()["totals"][0]["requests"] == 1
    await trio.to_thread.run_sync(pg.stop)
    await trio.to_thread.run_sync(pg.start)
    r = await a.client.get("/usage")
    assert r.status_code == 200 and r.json()["totals"][0]["requests"] == 1


async def test_usage_answers_once_postgres_comes_up_after_the_start(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    """Started without its database (spilling), an instance has not migrated it: its first
    query does, as every query did before, and finds the ledger empty rather than missing."""
    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    await trio.to_thread.run_sync(pg.stop)
    (a,) = await cluster(up, n=1)
    assert a.app.ledger is not None and a.app.ledger.degraded
    await trio.to_thread.run_sync(pg.start)
    r = await a.client.get("/usage")
    assert r.status_code == 200 and r.json()["totals"][0]["requests"] == 0


async def test_cache_shared_across_instances(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer, cluster: Any
) -> None:
    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["cached answer"]))).start(nursery)
    a, b, _ = await cluster(up)
    await wait_for(lambda: _connected(a, b), 5)
    first = await post(a)
    assert first.headers["x-balancer-dedup"] == "leader"
    await a.wait_idle()

    import redis

    async def stored() -> bool:  # the write to Redis is queued off the hot path
        def keys() -> list[bytes]:
            with redis.Redis.from_url(redis_srv.url) as client:
                return list(client.scan_iter("trio-balancer:cache:*"))

        return bool(await trio.to_thread.run_sync(keys))

    await wait_for(stored, 2)
    second = await post(b)
    assert second.headers["x-balancer-dedup"] == "cache"
    assert len(up.received) == 1


async def test_route_and_why_recorded_in_postgres(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer
) -> None:
    """The ledger's route and route_why columns (migration 4) on PostgreSQL."""
    up = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    data = cluster_config(tmp_path, "r", pg, redis_srv, up)
    data["routes"] = [
        {"name": "deep", "match": "claude-*", "when": {"thinking": True}, "targets": [{"provider": "p0"}]},
        {"match": "*", "targets": [{"provider": "p0"}]},
    ]
    b = await start_balancer(nursery, parse_config(data))
    async with b.client:
        thinking = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}
        labels = [(await post(b, body)).headers["x-balancer-route"] for body in (thinking, BODY)]
    assert labels == ["deep", "1"]
    await b.wait_idle()
    assert b.app.ledger is not None
    with trio.fail_after(5):
        await b.app.ledger.wait_written(2)
    store = open_store(pg.url)
    try:
        rows = store.records(limit=100)
    finally:
        store.close()
    assert sorted((r["route"], r["route_why"]) for r in rows) == [
        ("1", "match *"),
        ("deep", "match claude-*; thinking"),
    ]


async def test_two_instances_on_postgres_enforce_one_budget(
    tmp_path: Path, nursery: trio.Nursery, pg: PgServer, redis_srv: RedisServer
) -> None:
    """Spend on one instance is counted by the other at its next sync from the shared ledger
    (``budget_sync_s``), as is everything the instances spent before they started."""

    def answer(r: Received) -> Reply:
        if json.loads(r.body).get("stream"):
            return Reply(steps=anthropic_text_events(["hello world!"]))  # 15 tokens: $1.50
        return Reply(
            headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message("hello world!")).encode()]
        )

    up = await FakeUpstream(answer).start(nursery)
    budget_key = {"name": "team", "sha256": KEY_SHA, "budget_usd": {"day": 3}}
    made = []
    for name in "ab":
        config = cluster_config(tmp_path, name, pg, redis_srv, up, budget_sync_s=0.2)
        config["server"]["client_keys"] = [budget_key]
        config["prices"] = [{"model": "*", "input": 100_000, "output": 100_000}]
        made.append(await start_balancer(nursery, parse_config(config)))
    a, b = made
    assert (await post(a)).status_code == 200  # $1.50 on a
    r = await a.client.post("/v1/messages", json=message_body(), headers={"x-api-key": KEY})
    assert r.status_code == 200  # $1.30 on a, JSON: $0.20 left
    assert a.app.ledger is not None
    with trio.fail_after(10):
        await a.app.ledger.wait_written(2)
    written = time.time()

    async def b_synced() -> bool:
        synced = b.app.state.budgets.synced_at
        return synced is not None and synced > written

    await wait_for(b_synced, 10)
    fresh = {"x-balancer-no-dedup": "1"}  # a's answer is in the shared cache: free, not spend
    assert (await post(b, **fresh)).status_code == 200  # b knows $2.80 of it: admitted, $1.50 more
    assert b.app.ledger is not None
    with trio.fail_after(10):
        await b.app.ledger.wait_written(1)  # recorded (a response ends a moment before its record)
    r = await b.client.post("/v1/messages", json=message_body(), headers={"x-api-key": KEY, **fresh})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error", r.text
    assert "daily budget of $3.00" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1
    for inst in made:
        await inst.client.aclose()
