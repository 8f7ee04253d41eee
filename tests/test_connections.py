"""Connections end when they should: after the body for HTTP/1.0 and ``Connection: close``,
at once when the client closes, at the keep-alive timeout when idle; and a response that was
sent whole is recorded as delivered, whoever listened to it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h11
import trio
import trio.testing

from trio_balancer.config import parse_config

from .fakes import FakeUpstream, Pause, Reply, anthropic_text_events
from .helpers import (
    BODY,
    Balancer,
    BalancerFactory,
    provider_config,
    raw_request,
    start_balancer,
    wait_for_listeners,
)


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def read_one_response(stream: trio.SocketStream) -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/v1/messages", headers=[("host", "x")]))
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)


def connections_on(port: int) -> int:
    """Open TCP sockets of this process (both ends, clients are in-process) on ``port``,
    the listening socket aside; read from /proc, as ``ss`` would."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            ports = {int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)}
            if fields[9] in inodes and port in ports and fields[3] != "0A":  # 0A: LISTEN
                count += 1
    return count


def other_fds() -> int:
    """Descriptors that are not sockets: files, pipes."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:[")
        except OSError:
            continue
    return count


class TestConnectionClose:
    async def test_http10_client_sees_the_close_after_the_body(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["one", " two"])))
        stream = await trio.open_tcp_stream("127.0.0.1", balancer.port)
        await stream.send_all(raw_request(balancer.port, BODY, version=b"1.0"))
        with trio.fail_after(5):  # before the fix: the body arrived, then the socket stayed open
            raw = await read_until_eof(stream)
        assert b"200" in raw.split(b"\r\n", 1)[0] and b"message_stop" in raw
        await stream.aclose()

    async def test_connection_close_header_is_honoured(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["one"])))
        stream = await trio.open_tcp_stream("127.0.0.1", balancer.port)
        await stream.send_all(raw_request(balancer.port, {**BODY, "stream": False}, close=True))
        with trio.fail_after(5):
            raw = await read_until_eof(stream)
        assert raw.startswith(b"HTTP/1.1 200") and b'"type":"message"' in raw
        await stream.aclose()

    async def test_idle_keep_alive_connection_is_closed_on_time(
        self, nursery: trio.Nursery, upstream: FakeUpstream
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["one"])))
        b = await start_balancer(nursery, parse_config(provider_config(upstream)), keep_alive_timeout=0.5)
        stream = await trio.open_tcp_stream("127.0.0.1", b.port)
        # Taken before the request, so surely before the server's idle timer starts (after its
        # response): however late this task reads the response, the bound below holds.
        start = trio.current_time()
        await stream.send_all(raw_request(b.port, BODY))
        status, body = await read_one_response(stream)
        assert status == 200 and b"message_stop" in body
        with trio.fail_after(5):  # before the fix: never closed
            assert await stream.receive_some(65536) == b""
        assert trio.current_time() - start >= 0.4  # the keep-alive timeout, not at once
        await stream.aclose()
        await b.client.aclose()


async def test_descriptors_return_to_baseline(nursery: trio.Nursery, upstream: FakeUpstream) -> None:
    """25 keep-alive clients each served a stream; 12 then close, 13 stay idle. The balancer
    closes its end of the first at once and of the others at the keep-alive timeout, and every
    descriptor comes back (the issue saw 25 of 25 still open after the timeout)."""
    upstream.script(lambda _r: Reply(steps=anthropic_text_events(["x"])))
    b = await start_balancer(nursery, parse_config(provider_config(upstream)), keep_alive_timeout=1.0)
    port = b.port
    warm = await trio.open_tcp_stream("127.0.0.1", port)  # first request: pools, ledger, imports
    await warm.send_all(raw_request(port, {**BODY, "messages": [{"role": "user", "content": "warm"}]}))
    await read_one_response(warm)
    await warm.aclose()
    await b.wait_idle()
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert connections_on(port) == 0
    files = other_fds()
    streams = []
    for i in range(25):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request(port, {**BODY, "messages": [{"role": "user", "content": f"c{i}"}]}))
        status, body = await read_one_response(stream)
        assert status == 200 and b"message_stop" in body
        streams.append(stream)
    assert connections_on(port) == 50  # our 25 ends and the balancer's, all kept alive
    closing, idle = streams[:12], streams[12:]
    for stream in closing:
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked(0.05)  # every connection task has seen its EOF
    # Before: a closed connection's server end lingered until the keep-alive timeout.
    assert connections_on(port) == 2 * len(idle)
    with trio.fail_after(10):  # before: idle ones were never closed at all
        for stream in idle:
            assert await stream.receive_some(65536) == b""
            await stream.aclose()
    await trio.testing.wait_all_tasks_blocked(0.05)
    # (Idle upstream connections stay pooled by design; they are not counted here.)
    assert connections_on(port) == 0
    assert other_fds() == files
    await b.client.aclose()


async def test_whole_responses_are_recorded_as_delivered(
    upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Any
) -> None:
    """Leader, follower and cache hit all got their whole answer: none is 'disconnected'."""
    events = anthropic_text_events(["shared", " answer"])
    hold = Pause()
    upstream.script(Reply(steps=[*events[:4], hold, *events[4:]]))  # a pause after the commit point
    b = await balancer_for(
        upstream, config={**provider_config(upstream), "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"}}
    )
    results: list[bytes] = []

    async def one() -> None:
        async with b.client.stream("POST", "/v1/messages", json=BODY) as r:
            results.append(await r.aread())

    async with trio.open_nursery() as n:
        n.start_soon(one)
        await hold.wait_reached()
        n.start_soon(one)  # joins the live flight
        await wait_for_listeners(b.app, 2)
        hold.release()
    async with b.client.stream("POST", "/v1/messages", json=BODY) as r:
        results.append(await r.aread())  # from the cache
    assert len(upstream.received) == 1 and all(b"message_stop" in r for r in results)
    await b.wait_idle()
    rows = await b.ledger_rows(3)
    assert sorted(r["dedup_role"] for r in rows) == ["cache", "follower", "leader"]
    assert all(r["outcome"] == "delivered" and not r["disconnected"] for r in rows), rows
