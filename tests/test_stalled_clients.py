"""A client that takes nothing ends: its connection is closed after the stall bound, its
request recorded, its upstream released; and it cannot hold a shutdown open."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_balancer.app import hypercorn_fix
from trio_balancer.config import parse_config
from trio_balancer.ledger import SqliteStore

from .fakes import BigAnswers
from .helpers import PROVIDER_KEY, big_answer_request, start_balancer


async def stalled_client(port: int, i: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    client = trio.SocketStream(sock)
    await client.send_all(big_answer_request(port, i))
    return client


def config(tmp_path: Path, upstream: BigAnswers) -> dict[str, object]:
    return {
        "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
        "providers": [{"name": "big", "kind": "anthropic", "base_url": f"http://127.0.0.1:{upstream.port}",
                       "api_key": PROVIDER_KEY}],
    }  # fmt: skip


async def test_a_client_that_takes_nothing_is_let_go(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hypercorn_fix, "SEND_STALL_S", 0.5)
    upstream = await BigAnswers().start(nursery)
    b = await start_balancer(nursery, parse_config(config(tmp_path, upstream)))
    client = await stalled_client(b.port, 0)
    with trio.fail_after(20):  # before: held forever, upstream and all
        while not (upstream.sent and not b.app.flights):
            await trio.testing.wait_all_tasks_blocked(0.05)
        await b.wait_idle()
    assert b.app.ledger is not None
    with trio.fail_after(5):
        await b.app.ledger.wait_written(1)
    rows = (await b.client.get("/usage/requests")).json()["records"]
    assert [r["outcome"] for r in rows] == ["client_left"]
    await client.aclose()
    await b.client.aclose()


async def test_a_stalled_client_cannot_hold_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hypercorn_fix, "SEND_STALL_S", 2.0)  # the write in progress ends by this bound
    stop = trio.Event()
    hung = False
    async with trio.open_nursery() as outer:
        upstream = await BigAnswers().start(outer)
        async with trio.open_nursery() as served:
            b = await start_balancer(served, parse_config(config(tmp_path, upstream)), shutdown=stop.wait)
            client = await stalled_client(b.port, 1)
            with trio.fail_after(20):
                while not upstream.sent:
                    await trio.testing.wait_all_tasks_blocked(0.05)
                await trio.testing.wait_all_tasks_blocked(0.2)  # stuck on the write to the client

            async def watchdog() -> None:
                """Before the fix the shielded write outlived every deadline; a bound for the test."""
                nonlocal hung
                await trio.sleep(15)  # far past grace (0.5 s) + the stall bound (2 s)
                hung = True
                await client.aclose()  # unblocks the write, so the test ends either way

            outer.start_soon(watchdog)
            stop.set()  # grace period 0.5 s
        outer.cancel_scope.cancel()
    await b.client.aclose()
    await client.aclose()
    assert not hung, "the shutdown waited on a client that reads nothing"
    store = SqliteStore(str(tmp_path / "l.sqlite3"))
    rows = store.records()
    store.close()
    assert len(rows) == 1 and rows[0]["outcome"] in ("cut", "client_left")
