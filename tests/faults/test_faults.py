"""Fault injection with the simulator: whatever one upstream or client does, the others finish
unharmed, nothing is left behind (tasks, upstream responses, flights, memory), and the ledger
holds exactly one record per request."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from trio_balancer.flight import Flight
from trio_balancer.tools import simulator

from ..helpers import NO_DEDUP, Balancer, BalancerFactory, assert_error

MSG: list[Any] = [{"role": "user", "content": "hello"}]
HEALTHY = {"x-sim-events": "15", "x-sim-eps": "30"}


class Harness:
    def __init__(self, balancer: Balancer, sim: simulator.Simulator) -> None:
        self.b = balancer
        self.sim = sim
        self.requests = 0

    def body(self, **extra: Any) -> dict[str, Any]:
        self.requests += 1
        return {
            "model": "claude-opus-4-6",
            "max_tokens": 16,
            "stream": True,
            "messages": MSG,
            "metadata": {"n": self.requests},
            **extra,
        }

    async def healthy_stream(self, client: httpx.AsyncClient, results: list[bytes], i: int) -> None:
        body = self.body()
        body["messages"] = [{"role": "user", "content": f"bystander {i} {self.requests}"}]
        async with client.stream("POST", "/v1/messages", json=body, headers=NO_DEDUP | HEALTHY) as r:
            results.append(await r.aread())

    async def with_bystanders(self, fault: Any, n: int = 3) -> None:
        """Run ``fault(client)`` while ``n`` healthy streams go on; all healthy ones must finish whole."""
        results: list[bytes] = []
        async with (
            httpx.AsyncClient(base_url=self.b.url, timeout=30, trust_env=False) as client,
            trio.open_nursery() as nursery,
        ):
            for i in range(n):
                nursery.start_soon(self.healthy_stream, client, results, i)
            await fault(client)
        assert len(results) == n
        for body in results:
            assert body.count(b"event: content_block_delta") == 15, body[-300:]
            assert body.endswith(b'data: {"type":"message_stop"}\n\n')

    async def assert_clean(self) -> None:
        """Nothing left behind, and one ledger record per request."""
        await self.b.wait_idle()
        with trio.fail_after(5):
            await self.sim.wait_inactive()
        await wait_all_tasks_blocked(0.02)
        app = self.b.app
        assert app.task_count() == 1  # only the SIGHUP listener
        assert app.flights == set() and app.shared == {}
        assert app.registry is not None and all(r.in_use == 0 for r in app.registry.runtimes.values())
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, Flight)] == []
        assert app.ledger is not None
        with trio.fail_after(5):
            await app.ledger.wait_written(self.requests)
        assert app.ledger.written == self.requests


@pytest.fixture
async def harness(nursery: trio.Nursery, balancer_for: BalancerFactory) -> AsyncIterator[Harness]:
    sim = simulator.Simulator()
    port = await nursery.start(partial(simulator.serve, sim))
    config = {
        "server": {"max_upstream_event_bytes": 256 * 1024},
        "providers": [
            {
                "name": "sim",
                "kind": "anthropic",
                "base_url": f"http://127.0.0.1:{port}",
                "api_key": "k",
                "timeouts": {"idle": 0.5, "first_byte": 2},
            },
            {"name": "dead", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"},
        ],
        "routes": [
            {"match": "dead-*", "targets": [{"provider": "dead"}]},
            {"match": "*", "targets": [{"provider": "sim"}]},
        ],
    }
    b = await balancer_for(config=config)
    await wait_all_tasks_blocked(0.02)
    yield Harness(b, sim)


UPSTREAM_FAULTS = {
    "reset mid-stream": ({"x-sim-reset-after": "3"}, 200, b"api_error"),
    "stall": ({"x-sim-stall-after": "3"}, 200, b"timeout_error"),
    "invalid utf-8": ({"x-sim-bad-utf8": "1", "x-sim-events": "4", "x-sim-eps": "0"}, 200, b"message_stop"),
    "garbage": ({"x-sim-garbage": "1"}, 502, b"api_error"),
    "huge event": ({"x-sim-huge-event": str(1024 * 1024)}, 200, b"api_error"),
    "closes without status": ({"x-sim-no-status": "1"}, 502, b"api_error"),
    "error status": ({"x-sim-status": "500"}, 500, b"api_error"),
    "trickle": ({"x-sim-trickle": "1", "x-sim-events": "3", "x-sim-eps": "0"}, 200, b"message_stop"),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_FAULTS))
async def test_upstream_fault(harness: Harness, name: str) -> None:
    headers, status, expect = UPSTREAM_FAULTS[name]
    seen: dict[str, Any] = {}

    async def fault(client: httpx.AsyncClient) -> None:
        async with client.stream(
            "POST", "/v1/messages", json=harness.body(), headers=NO_DEDUP | headers
        ) as r:
            seen["status"], seen["body"] = r.status_code, await r.aread()

    await harness.with_bystanders(fault)
    assert seen["status"] == status and expect in seen["body"], seen
    if status == 200 and expect != b"message_stop":
        assert seen["body"].count(b"event: error") == 1
    await harness.assert_clean()


async def test_upstream_refuses(harness: Harness) -> None:
    async def fault(client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/messages", json=harness.body(model="dead-1"), headers=NO_DEDUP)
        assert_error(r, 502, "api_error")

    await harness.with_bystanders(fault)
    await harness.assert_clean()


async def test_client_disconnects_at_every_event_index(harness: Harness) -> None:
    async def fault(client: httpx.AsyncClient) -> None:
        for index in range(12):
            async with (
                client.stream("POST", "/v1/messages", json=harness.body(), headers=NO_DEDUP | HEALTHY) as r,
                aclosing(r.aiter_raw()) as it,
            ):
                seen = 0
                async for chunk in it:
                    seen += chunk.count(b"\n\n")
                    if seen > index:
                        break

    await harness.with_bystanders(fault)
    await harness.assert_clean()


async def test_client_reads_very_slowly(harness: Harness) -> None:
    """Big events and a reader that sleeps: backpressure reaches the upstream, nobody else waits."""
    big = {"x-sim-events": "40", "x-sim-event-bytes": "20000", "x-sim-eps": "0"}

    async def fault(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/messages", json=harness.body(), headers=NO_DEDUP | big) as r:
            total = 0
            async for chunk in r.aiter_raw(4096):
                total += len(chunk)
                await trio.sleep(0.002)
        assert total > 40 * 20000

    await harness.with_bystanders(fault)
    await harness.assert_clean()


async def test_client_sends_its_body_slowly(harness: Harness) -> None:
    async def fault(client: httpx.AsyncClient) -> None:
        raw = json.dumps(harness.body(stream=False)).encode()

        async def dribble() -> AsyncIterator[bytes]:
            for i in range(0, len(raw), 7):
                yield raw[i : i + 7]
                await trio.sleep(0.01)

        r = await client.post(
            "/v1/messages",
            content=dribble(),
            headers={"content-type": "application/json", **NO_DEDUP},
        )
        assert r.status_code == 200

    await harness.with_bystanders(fault)
    await harness.assert_clean()
