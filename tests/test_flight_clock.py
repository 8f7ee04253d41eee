"""Flights against in-memory providers (httpx.MockTransport) on trio's MockClock.

No sockets, so autojump is safe: default timeouts of minutes and cooldowns from retry-after
elapse in virtual time, and the tests take milliseconds.
"""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
import trio
import trio.testing

from trio_balancer.flight import Flight, Head, UpstreamRequest
from trio_balancer.policy.routing import Router
from trio_balancer.upstream.providers import Registry

from .fakes import PacedStream, anthropic_text_events, error_payload, mock_providers

GOOD = anthropic_text_events(["ok"])


def sse_response(chunks: list[bytes], **kw: object) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=PacedStream(chunks, **kw)
    )  # type: ignore[arg-type]


REQUEST = UpstreamRequest(
    path="/v1/messages", query=b"", headers=(), body=b"{}", payload={}, model="claude-sonnet-4-6", stream=True
)


async def run_flight(registry: Registry, router: Router) -> tuple[Flight, int, bytes]:
    attempts = router.plan(REQUEST.model, registry.runtimes, now=trio.current_time())
    flight = Flight(REQUEST, attempts, registry.runtimes)
    listener = flight.subscribe()
    status, body = 0, bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flight.run)
        async for item in listener:
            if isinstance(item, Head):
                status = item.status
            elif isinstance(item, bytes):
                body += item
    return flight, status, bytes(body)


async def ok(_r: httpx.Request) -> httpx.Response:
    return sse_response(GOOD)


async def hang(_r: httpx.Request) -> httpx.Response:
    await trio.sleep_forever()
    raise AssertionError


async def test_default_first_byte_timeout_fails_over(autojump_clock: trio.testing.MockClock) -> None:
    _, registry, router = mock_providers({"a": hang, "b": ok})
    start = trio.current_time()
    flight, status, body = await run_flight(registry, router)
    assert (status, body) == (200, b"".join(GOOD))
    assert trio.current_time() - start == pytest.approx(120.0)  # Timeouts.first_byte default
    assert [t.provider for t in flight.tried] == ["a", "b"]
    assert "no response headers within 120 s" in (flight.tried[0].error or "")


async def test_idle_timeout_before_commit_fails_over(autojump_clock: trio.testing.MockClock) -> None:
    async def silent_after_start(_r: httpx.Request) -> httpx.Response:
        return sse_response(GOOD[:1], then_hang=True)

    _, registry, router = mock_providers({"a": silent_after_start, "b": ok}, timeouts={"idle": 45})
    start = trio.current_time()
    _, status, body = await run_flight(registry, router)
    assert (status, body) == (200, b"".join(GOOD))
    assert trio.current_time() - start == pytest.approx(45.0)


async def test_idle_deadline_slides_with_traffic(autojump_clock: trio.testing.MockClock) -> None:
    """A stream with an event every 20 s never trips a 30 s idle timeout, however long it runs."""

    async def slow(_r: httpx.Request) -> httpx.Response:
        return sse_response(anthropic_text_events([f"t{i}" for i in range(30)]), gap=20.0)

    _, registry, router = mock_providers({"a": slow}, timeouts={"idle": 30})
    flight, status, _ = await run_flight(registry, router)
    assert status == 200 and flight.completed


async def test_short_idle_bound_does_not_fire_on_a_live_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An idle bound shorter than the deadline-sliding interval once fired mid-stream."""

    async def steady(_r: httpx.Request) -> httpx.Response:
        return sse_response(anthropic_text_events([f"t{i}" for i in range(40)]), gap=0.1)

    _, registry, router = mock_providers({"a": steady}, timeouts={"idle": 0.5})
    flight, status, _ = await run_flight(registry, router)
    assert status == 200 and flight.completed


async def test_slow_json_body_is_not_idle(autojump_clock: trio.testing.MockClock) -> None:
    body = json.dumps(
        {"id": "m", "type": "message", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}
    ).encode()

    async def trickle(_r: httpx.Request) -> httpx.Response:
        chunks = [body[i : i + 8] for i in range(0, len(body), 8)]
        return httpx.Response(
            200, headers={"content-type": "application/json"}, stream=PacedStream(chunks, gap=0.3)
        )

    _, registry, router = mock_providers({"a": trickle}, timeouts={"idle": 1.0})
    _flight, status, out = await run_flight(registry, router)
    assert (status, out) == (200, body) and trio.current_time() > 1.0


async def test_retry_after_cooldown_then_half_open_trial(autojump_clock: trio.testing.MockClock) -> None:
    calls = {"a": 0}

    async def limited_once(_r: httpx.Request) -> httpx.Response:
        calls["a"] += 1
        if calls["a"] == 1:
            return httpx.Response(
                429,
                headers={"retry-after": "30"},
                json=error_payload("rate_limit_error", "slow down"),
            )
        return sse_response(GOOD)

    _, registry, router = mock_providers({"a": limited_once, "b": ok})
    flight, _, _ = await run_flight(registry, router)
    assert [t.provider for t in flight.tried] == ["a", "b"]
    await trio.sleep(29)
    flight, _, _ = await run_flight(registry, router)
    assert [t.provider for t in flight.tried] == ["b"]  # a still cooling
    await trio.sleep(2)
    assert registry.runtimes["a"].health.snapshot(trio.current_time()).state.value == "half_open"
    flight, _, _ = await run_flight(registry, router)
    assert [t.provider for t in flight.tried] == ["a"]  # the trial, and it succeeds
    assert registry.runtimes["a"].health.state.value == "healthy"


async def test_backoff_doubles_across_failed_trials(autojump_clock: trio.testing.MockClock) -> None:
    async def down(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json=error_payload("api_error", "x"))

    _, registry, router = mock_providers({"a": down, "b": ok})
    health = registry.runtimes["a"].health
    health.rng = lambda: 0.5  # no jitter
    lengths = []
    for _ in range(4):
        now = trio.current_time()
        await run_flight(registry, router)
        lengths.append(health.cooling_until - now)
        await trio.sleep(health.cooling_until - trio.current_time())
    assert lengths == pytest.approx([1.0, 2.0, 4.0, 8.0])


async def test_connect_retry_backoff(autojump_clock: trio.testing.MockClock) -> None:
    tries: list[float] = []

    async def refuse(r: httpx.Request) -> httpx.Response:
        tries.append(trio.current_time())
        raise httpx.ConnectError("refused", request=r)

    _, registry, router = mock_providers({"a": refuse, "b": ok}, max_retries=3)
    flight, status, _ = await run_flight(registry, router)
    assert status == 200 and [t.provider for t in flight.tried] == ["a", "b"]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps == pytest.approx([0.2, 0.4, 0.8])
