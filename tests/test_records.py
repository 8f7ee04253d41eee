"""Every request is recorded, also at shutdown and on a full disk; a ledger that cannot be
opened stops the start."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from trio_balancer.app.asgi import create_app
from trio_balancer.config import parse_config
from trio_balancer.ledger import backlog as ledger_backlog
from trio_balancer.ledger import store as ledger_store

from .fakes import HANG, FakeUpstream, Reply, anthropic_text_events
from .helpers import BODY, PROVIDER_KEY, Balancer, BalancerFactory, start_balancer, wait_until


def config_for(tmp_path: Path, upstream: FakeUpstream, **server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "ledger": {"url": f"sqlite:///{tmp_path}/ledger.sqlite3"},
        "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}],
    }


def stored(tmp_path: Path) -> list[dict[str, Any]]:
    store = ledger_store.SqliteStore(str(tmp_path / "ledger.sqlite3"))
    try:
        return store.records(limit=1000)
    finally:
        store.close()


async def test_streams_cut_at_shutdown_are_recorded_as_cut(
    nursery: trio.Nursery, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A leader and three followers on a stream that never ends, then SIGTERM's graceful
    shutdown: four records, each saying the stream was cut (the issue found 1 of 4, as 200)."""
    events = anthropic_text_events(["started"])
    upstream.script(Reply(steps=[*events[:4], HANG]))
    stop = trio.Event()
    config = parse_config(config_for(tmp_path, upstream))
    committed = 0
    all_in = trio.Event()
    async with trio.open_nursery() as served:
        b = await start_balancer(served, config, shutdown=stop.wait)

        async def client() -> None:
            nonlocal committed
            try:
                async with b.client.stream("POST", "/v1/messages", json=BODY) as r:
                    committed += 1
                    if committed == 4:
                        all_in.set()
                    await r.aread()
            except httpx.HTTPError:
                pass  # the connection is cut: that is the point

        async with trio.open_nursery() as clients:
            clients.start_soon(client)
            await wait_until(lambda: bool(b.app.shared))  # the leader's flight is live and joinable
            for _ in range(3):
                clients.start_soon(client)
            with trio.fail_after(5):
                await all_in.wait()
            stop.set()  # graceful shutdown: grace period 0.5 s, then the streams are cut
        await b.client.aclose()
    rows = stored(tmp_path)
    assert sorted(r["dedup_role"] for r in rows) == ["follower", "follower", "follower", "leader"]
    assert all(r["outcome"] == "cut" and r["status"] == 200 and not r["disconnected"] for r in rows), rows


class TestLedgerStart:
    async def test_lifespan_reports_the_path_and_the_reason(self, tmp_path: Path) -> None:
        (tmp_path / "a-file").write_text("not a directory")
        bad = f"sqlite:///{tmp_path}/a-file/ledger.sqlite3"
        app = create_app(
            parse_config(
                {
                    "ledger": {"url": bad},
                    "providers": [
                        {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"}
                    ],
                }
            )
        )
        to_app, from_server = trio.open_memory_channel[dict[str, Any]](4)
        to_server, from_app = trio.open_memory_channel[dict[str, Any]](4)
        await to_app.send({"type": "lifespan.startup"})
        with trio.fail_after(5):
            await app({"type": "lifespan"}, from_server.receive, to_server.send)  # type: ignore[arg-type]
        message = from_app.receive_nowait()
        assert message["type"] == "lifespan.startup.failed"
        assert f"{tmp_path}/a-file/ledger.sqlite3" in message["message"]
        assert "File exists" in message["message"] or "Not a directory" in message["message"]

    def test_serve_exits_non_zero_with_the_reason(self, tmp_path: Path) -> None:
        (tmp_path / "a-file").write_text("not a directory")
        config = tmp_path / "c.toml"
        config.write_text(
            f'[ledger]\nurl = "sqlite:///{tmp_path}/a-file/ledger.sqlite3"\n'
            '[[providers]]\nname = "p"\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9"\napi_key = "k"\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--port", "0"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        err = result.stderr.decode()
        assert result.returncode == 1, err[-2000:]
        assert (
            f"trio-balancer: cannot start: cannot open the ledger at {tmp_path}/a-file/ledger.sqlite3" in err
        )
        assert "listening on" not in err


class Disk:
    """The ledger's disk, full on demand: while ``full``, every write fails the way SQLite
    fails on a full disk (SQLITE_FULL)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real = ledger_store.SqliteStore.write

        def write(store: ledger_store.SqliteStore, records: Any) -> None:
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")
            real(store, records)

        monkeypatch.setattr(ledger_store.SqliteStore, "write", write)


async def full_after_one(
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    balancer_for: BalancerFactory,
    tmp_path: Path,
    letter: str,
) -> tuple[Disk, Balancer]:
    """A balancer whose first record was written, and whose disk is full from now on."""
    disk = Disk(monkeypatch)
    upstream.script(lambda _r: Reply(steps=anthropic_text_events([letter * 400])))
    b = await balancer_for(config=config_for(tmp_path, upstream))
    assert b.app.ledger is not None
    await b.client.post("/v1/messages", json=BODY)
    with trio.fail_after(5):
        await b.app.ledger.wait_written(1)
    disk.full = True
    return disk, b


class TestFullDisk:
    async def test_degraded_while_full_and_nothing_lost_after(
        self,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        disk, b = await full_after_one(monkeypatch, upstream, balancer_for, tmp_path, "x")
        assert b.app.ledger is not None
        for i in range(30):
            body = {**BODY, "messages": [{"role": "user", "content": f"while full {i} " + "pad " * 200}]}
            assert (await b.client.post("/v1/messages", json=body)).status_code == 200  # requests go on
        await b.wait_idle()
        ledger = b.app.ledger
        await wait_until(lambda: bool(ledger.backlog))
        status = (await b.client.get("/status.json")).json()["ledger"]
        assert status["degraded"] is True and status["backlog"] > 0 and status["lost"] == 0
        metrics = (await b.client.get("/metrics")).text
        assert "trio_balancer_ledger_degraded 1.0" in metrics
        page = (await b.client.get("/status")).text
        assert "Usage ledger degraded" in page
        disk.full = False
        with trio.fail_after(15):  # the backlog is retried with backoff, at most 5 s apart
            await b.app.ledger.wait_written(31)
        assert not b.app.ledger.degraded and b.app.ledger.lost == 0
        assert "trio_balancer_ledger_degraded 0.0" in (await b.client.get("/metrics")).text
        assert len(stored(tmp_path)) == 31

    async def test_past_the_bound_records_are_counted_and_logged_whole(
        self,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        captured: list[dict[str, Any]],
    ) -> None:
        monkeypatch.setattr(ledger_backlog, "BACKLOG_MAX", 3)
        _disk, b = await full_after_one(monkeypatch, upstream, balancer_for, tmp_path, "y")
        assert b.app.ledger is not None
        for i in range(8):
            body = {**BODY, "messages": [{"role": "user", "content": f"lost {i} " + "pad " * 200}]}
            await b.client.post("/v1/messages", json=body)
        await b.wait_idle()
        ledger = b.app.ledger
        await wait_until(lambda: ledger.lost + ledger.backlog >= 8)
        assert b.app.ledger.backlog <= 3 and b.app.ledger.lost >= 5
        lost_lines = [e for e in captured if e["event"] == "ledger.record_lost"]
        assert len(lost_lines) == b.app.ledger.lost
        assert all(line["record"]["id"].startswith("req_") for line in lost_lines)  # whole, recoverable
        assert "trio_balancer_ledger_lost_records" in (await b.client.get("/metrics")).text


class TestRecordsTheStoreCannotTake:
    """From the attack on this work: one record must never hold every later one back."""

    async def test_a_lying_usage_count_is_kept_at_the_bound(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        huge = json.dumps({"id": "m", "type": "message", "role": "assistant", "model": "x", "content": 5,
                           "stop_reason": "end_turn", "usage": {"input_tokens": 10**20, "output_tokens": 10**30}})  # fmt: skip
        upstream.script(
            lambda _r: Reply(headers=[("content-type", "application/json")], steps=[huge.encode()])
        )
        b = await balancer_for(config=config_for(tmp_path, upstream))
        for i in range(3):
            body = {**BODY, "stream": False, "messages": [{"role": "user", "content": f"n{i}"}]}
            assert (await b.client.post("/v1/messages", json=body)).status_code == 200  # relayed as sent
        await b.wait_idle()
        assert b.app.ledger is not None
        with trio.fail_after(5):
            await b.app.ledger.wait_written(3)
        rows = stored(tmp_path)
        assert len(rows) == 3 and all(r["input_tokens"] == 10**12 for r in rows)
        assert not b.app.ledger.degraded

    async def test_a_record_the_store_refuses_is_given_up_alone(
        self,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        captured: list[dict[str, Any]],
    ) -> None:
        real = ledger_store.SqliteStore.write

        def write(store: ledger_store.SqliteStore, records: Any) -> None:
            if any(r.model == "claude-poison" for r in records):
                raise sqlite3.IntegrityError("this record cannot be stored")
            real(store, records)

        monkeypatch.setattr(ledger_store.SqliteStore, "write", write)
        upstream.script(lambda _r: Reply(steps=anthropic_text_events(["ok"])))
        b = await balancer_for(config=config_for(tmp_path, upstream))
        await b.client.post("/v1/messages", json={**BODY, "model": "claude-a"})
        await b.client.post("/v1/messages", json={**BODY, "model": "claude-poison"})
        await b.client.post("/v1/messages", json={**BODY, "model": "claude-b"})
        await b.wait_idle()
        assert b.app.ledger is not None
        ledger = b.app.ledger
        await wait_until(lambda: ledger.written + ledger.lost >= 3, limit=10)
        assert sorted(r["model"] for r in stored(tmp_path)) == ["claude-a", "claude-b"]
        assert b.app.ledger.lost == 1 and not b.app.ledger.degraded
        assert [e["record"]["model"] for e in captured if e["event"] == "ledger.record_lost"] == [
            "claude-poison"
        ]


class TestLedgerRefusesWhatCannotWork:
    async def test_a_newer_schema_stops_the_start(self, tmp_path: Path) -> None:
        path = tmp_path / "ledger.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(ValueError, match="schema is version 99, newer than this balancer knows"):
            ledger_store.SqliteStore(str(path))

    @pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:"])
    def test_a_ledger_that_would_vanish_is_a_config_error(self, url: str) -> None:
        from trio_balancer.config import ConfigError

        provider = {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"}
        with pytest.raises(ConfigError, match=r"ledger\.url: must name a file"):
            parse_config({"ledger": {"url": url}, "providers": [provider]})
