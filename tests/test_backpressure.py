"""Backpressure, not buffering: a client that stops reading stops its upstream.

Each listener's queue is bounded in bytes, so what sits in memory for a stalled client is a
small buffer, not its answer; the upstream, which keeps writing, finds its TCP window closed.
Shared flights bound each listener's lag in bytes as well as events, and keep at most
``max_shared_bytes`` of history.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import trio
import trio.testing

from trio_balancer.config import parse_config
from trio_balancer.flight import Flight, Head, SharePolicy, UpstreamRequest
from trio_balancer.flight.byte_queue import ByteQueue

from .fakes import ANSWER_BYTES, BigAnswers, PacedStream, anthropic_text_events, mock_providers
from .helpers import PROVIDER_KEY, big_answer_request, start_balancer


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_twenty_stalled_clients_hold_little_memory(nursery: trio.Nursery, tmp_path: Path) -> None:
    """20 clients that read nothing, each asking for an ~8 MB answer: RSS grows by less than
    16 MB (the issue saw +158 MB), and every upstream is stalled far short of its answer."""
    upstream = await BigAnswers().start(nursery)
    config = parse_config(
        {
            "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
            "providers": [{"name": "big", "kind": "anthropic", "base_url": f"http://127.0.0.1:{upstream.port}",
                           "api_key": PROVIDER_KEY}],
        }
    )  # fmt: skip  # dedup is on (the default): shared flights keep history too
    b = await start_balancer(nursery, config)
    port = b.port
    clients = []
    await trio.testing.wait_all_tasks_blocked(0.05)
    before = rss_bytes()
    for i in range(20):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # a small window, then none
        await sock.connect(("127.0.0.1", port))
        client = trio.SocketStream(sock)
        await client.send_all(big_answer_request(port, i))
        clients.append(client)
    with trio.fail_after(30):  # (before the fix the answers streamed into memory instead)
        while len(upstream.sent) < 20:  # every request reached the upstream
            await trio.testing.wait_all_tasks_blocked(0.05)
        await trio.testing.wait_all_tasks_blocked(0.2)  # everyone is stuck: the upstreams on their sends
    grown = rss_bytes() - before
    assert grown < 16 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB"
    print(f"RSS grew {grown / 2**20:.1f} MiB; upstream sent {sorted(upstream.sent)}")
    assert all(sent < ANSWER_BYTES / 4 for sent in upstream.sent), (
        upstream.sent
    )  # the upstream sees the stall
    assert b.app.flights and all(f.committed for f in b.app.flights)
    for client in clients:
        await client.aclose()
    await b.wait_idle()
    await b.client.aclose()


REQUEST = UpstreamRequest(
    path="/v1/messages", query=b"", headers=(), body=b"{}", payload={}, model="claude-sonnet-4-6", stream=True
)
BIG = anthropic_text_events(["y" * 16_000 for _ in range(40)])  # 40 events of ~16 KB


async def test_shared_flight_bounds_a_stalled_listener_in_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=PacedStream(BIG, gap=0.1)
        )  # type: ignore[arg-type]

    _, registry, router = mock_providers({"a": handler})
    share = SharePolicy(keep_history=True, max_lag_events=1000, max_lag_bytes=64 * 1024, max_lag_s=2.0)
    flight = Flight(REQUEST, router.plan("m", registry.runtimes, now=0.0), registry.runtimes, share)
    fast = flight.subscribe()
    stalled = flight.subscribe()
    got = bytearray()
    lag_peak = 0
    async with trio.open_nursery() as n:
        n.start_soon(flight.run)
        async for item in fast:
            lag_peak = max(lag_peak, stalled.queued_bytes)
            if isinstance(item, bytes):
                got += item
    assert bytes(got) == b"".join(BIG)
    assert flight.was_dropped(stalled)
    assert lag_peak <= 64 * 1024 + 17_000  # the bound plus at most one event
    assert lag_peak > 32 * 1024  # it was the bytes that cut it off, not the 1,000 events


async def test_history_past_the_bound_is_let_go(autojump_clock: trio.testing.MockClock) -> None:
    async def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=PacedStream(BIG, gap=0.1)
        )  # type: ignore[arg-type]

    _, registry, router = mock_providers({"a": handler})
    share = SharePolicy(keep_history=True, max_shared_bytes=100_000)
    flight = Flight(REQUEST, router.plan("m", registry.runtimes, now=0.0), registry.runtimes, share)
    listener = flight.subscribe()
    joinable_early = None
    async with trio.open_nursery() as n:
        n.start_soon(flight.run)
        async for item in listener:
            if isinstance(item, Head):
                joinable_early = flight.joinable
    assert joinable_early is True  # while the history was small, late joiners were welcome
    assert not flight.joinable and flight.history == []  # past the bound: no replay, nothing held


async def test_byte_queue_blocks_on_bytes_and_always_admits_one_item() -> None:
    queue: ByteQueue[bytes] = ByteQueue(10, len)
    queue.send_nowait(b"x" * 100)  # larger than the bound, but the queue was empty
    sent = trio.Event()

    async def producer() -> None:
        await queue.send(b"yy")
        sent.set()

    async with trio.open_nursery() as n:
        n.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # 100 bytes queued: full
        assert queue.receive_nowait() == b"x" * 100
        await sent.wait()
    assert queue.queued_bytes == 2
    queue.close()
    assert [item async for item in queue] == [b"yy"]
    other: ByteQueue[bytes] = ByteQueue(10, len)
    other.abandon()
    try:
        other.send_nowait(b"z")
    except trio.BrokenResourceError:
        pass
    else:
        raise AssertionError("a queue whose consumer left must refuse items")
