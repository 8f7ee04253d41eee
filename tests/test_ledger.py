"""The ledger end to end: one record per request whatever happened, estimates, restarts, reports."""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_balancer.cli import main
from trio_balancer.config import parse_config
from trio_balancer.ledger import MIGRATIONS, Record
from trio_balancer.ledger import SqliteStore as LedgerStore

from .fakes import CUT, HANG, FakeUpstream, Reply, anthropic_text_events, error_reply, interleave
from .helpers import BODY, CLIENT_KEY, PROVIDER_KEY, Balancer, BalancerFactory, start_balancer

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "token_corpus.jsonl").read_text().splitlines()
]


def ledger_config(tmp_path: Path, *upstreams: FakeUpstream) -> dict[str, Any]:
    return {
        "ledger": {"url": f"sqlite:///{tmp_path}/ledger.sqlite3"},
        "providers": [
            {"name": f"p{i}", "kind": "anthropic", "base_url": u.url, "api_key": PROVIDER_KEY}
            for i, u in enumerate(upstreams)
        ],
    }


class TestStore:
    def test_migrates_an_old_database(self, tmp_path: Path) -> None:
        path = tmp_path / "old.sqlite3"
        conn = sqlite3.connect(path)
        conn.executescript(f"{MIGRATIONS[0]}; PRAGMA user_version = 1;")
        conn.execute(
            "INSERT INTO requests (id, started_at, client, path, stream, usage_source, priced, dedup_role, disconnected, attempts)"
            " VALUES ('r1', 1, 'c', '/v1/messages', 1, 'estimated', 1, 'off', 0, '[]')"
        )
        conn.commit()
        conn.close()
        store = LedgerStore(str(path))
        assert store.version == len(MIGRATIONS)
        (row,) = store.records(flagged=True)
        assert row["id"] == "r1" and row["flagged"] is True
        store.close()

    def test_both_dialects_carry_the_same_released_schema(self) -> None:
        """Written out per dialect, the released migrations still differ only in SQLite's REAL."""
        from trio_balancer.ledger.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

        assert len(POSTGRES_MIGRATIONS) == len(SQLITE_MIGRATIONS) == len(MIGRATIONS)
        assert POSTGRES_MIGRATIONS[:3] == tuple(
            m.replace(" REAL", " DOUBLE PRECISION") for m in SQLITE_MIGRATIONS[:3]
        )

    def test_group_by_is_validated(self, tmp_path: Path) -> None:
        store = LedgerStore(str(tmp_path / "l.sqlite3"))
        with pytest.raises(ValueError, match="cannot group by"):
            store.summary(group_by=["id; DROP TABLE requests"])
        store.close()

    def test_duplicate_ids_written_once(self, tmp_path: Path) -> None:
        store = LedgerStore(str(tmp_path / "l.sqlite3"))
        rec = Record(
            id="r", started_at=1.0, client="c", model="m", path="/v1/messages", stream=False, status=200
        )
        store.write([rec, rec])
        store.write([rec])
        assert store.count() == 1
        store.close()


class TestEveryRequestRecorded:
    async def test_success_and_client_errors(
        self, tmp_path: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        upstream.script(Reply(steps=anthropic_text_events(["Hello"], input_tokens=321)))
        async with b.client.stream("POST", "/v1/messages", json=BODY, headers={"x-api-key": CLIENT_KEY}) as r:
            await r.aread()
        rid = r.headers["x-balancer-request-id"]
        bad = await b.client.post(
            "/v1/messages", content=b"{oops", headers={"content-type": "application/json"}
        )
        assert bad.headers["x-balancer-request-id"].startswith("req_")
        rows = {row["id"]: row for row in await b.ledger_rows(2)}
        ok = rows[rid]
        assert (ok["status"], ok["provider"], ok["usage_source"], ok["input_tokens"]) == (
            200,
            "p0",
            "reported",
            321,
        )
        assert ok["cost_usd"] > 0 and ok["priced"] and ok["ttfb_ms"] > 0 and ok["stream"]
        assert ok["client"].startswith("key-") and CLIENT_KEY not in json.dumps(rows)
        err = rows[bad.headers["x-balancer-request-id"]]
        assert (err["status"], err["error_type"], err["usage_source"], err["provider"]) == (
            400,
            "invalid_request_error",
            "none",
            None,
        )

    async def test_failover_lists_attempts(
        self, tmp_path: Path, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        a = await FakeUpstream(error_reply(529, "overloaded_error", "busy")).start(nursery)
        c = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
        b = await balancer_for(config=ledger_config(tmp_path, a, c))
        await b.client.post("/v1/messages", json=BODY)
        (row,) = await b.ledger_rows(1)
        assert row["provider"] == "p1" and row["status"] == 200
        assert [(x["provider"], x["status"]) for x in row["attempts"]] == [("p0", 529), ("p1", 200)]
        assert "overloaded_error" in row["attempts"][0]["error"]

    async def test_disconnect_records_what_was_streamed(
        self, tmp_path: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        events = anthropic_text_events([f"word{i} " for i in range(40)])
        upstream.script(Reply(steps=[*events[:7], HANG]))  # to "word3 ", then silent: the client leaves
        async with b.client.stream("POST", "/v1/messages", json=BODY) as r, aclosing(r.aiter_raw()) as it:
            async for chunk in it:
                if b"word3" in chunk:
                    break
        (row,) = await b.ledger_rows(1)
        assert row["disconnected"] is True and row["status"] == 200
        assert row["input_tokens"] == 12 and 0 < row["output_tokens"] < 40
        assert row["usage_source"] == "partial"  # input reported, output estimated from what streamed

    async def test_provider_without_usage_is_estimated_near_the_truth(
        self, tmp_path: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        """shared/reference/000: a provider that omits usage must not record 0 tokens and $0."""
        english = [r for r in CORPUS if r["kind"] in ("english", "markdown")][:3]
        chinese = [r for r in CORPUS if r["kind"] == "cjk_mixed"][:2]
        prompt, answer = english[0], [*english[1:], *chinese]
        pieces = [row["text"][i : i + 17] for row in answer for i in range(0, len(row["text"]), 17)]
        upstream.script(Reply(steps=anthropic_text_events(pieces, usage=False)))
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        body = {**BODY, "messages": [{"role": "user", "content": prompt["text"]}]}
        async with b.client.stream("POST", "/v1/messages", json=body) as r:
            await r.aread()
        (row,) = await b.ledger_rows(1)
        assert row["usage_source"] == "estimated" and row["flagged"] is True
        true_output = sum(r["tokens"] for r in answer)
        assert abs(row["output_tokens"] - true_output) / true_output < 0.25
        assert abs(row["input_tokens"] - prompt["tokens"]) / prompt["tokens"] < 0.35  # plus message overhead
        assert row["cost_usd"] > 0

    async def test_unknown_model_cost_empty_and_flagged(
        self, tmp_path: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        upstream.script(Reply(steps=anthropic_text_events(["x"])))
        await b.client.post("/v1/messages", json={**BODY, "model": "my-local-model"})
        (row,) = await b.ledger_rows(1)
        assert row["cost_usd"] is None and row["priced"] is False and row["flagged"] is True
        flagged = (await b.client.get("/usage/requests", params={"flagged": "1"})).json()["records"]
        assert [f["id"] for f in flagged] == [row["id"]]

    async def test_config_price_for_openai_style_model(
        self, tmp_path: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        config = {
            **ledger_config(tmp_path, upstream),
            "prices": [{"model": "glm-*", "provider": "p0", "input": 0.5, "output": 2}],
        }
        config["routes"] = [{"match": "*", "targets": [{"provider": "p0", "model": "glm-4.6"}]}]
        b = await balancer_for(config=config)
        upstream.script(Reply(steps=anthropic_text_events(["x"], input_tokens=1_000_000)))
        await b.client.post("/v1/messages", json=BODY)
        (row,) = await b.ledger_rows(1)
        assert row["upstream_model"] == "glm-4.6"
        assert row["cost_usd"] == pytest.approx(0.5 + row["output_tokens"] * 2 / 1e6)

    async def test_thousand_concurrent_requests_thousand_records(
        self, tmp_path: Path, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        rng = random.Random(11)
        good = anthropic_text_events([f"t{i}" for i in range(6)])

        def script(_r: object) -> Reply:
            roll = rng.random()
            if roll < 0.15:
                return error_reply(529, "overloaded_error")
            if roll < 0.25:
                return Reply(steps=[*good[:5], CUT])
            if roll < 0.3:
                return error_reply(400, "invalid_request_error")
            return Reply(steps=interleave(good, 0.01))

        a = await FakeUpstream(script).start(nursery)
        c = await FakeUpstream(script).start(nursery)
        config = ledger_config(tmp_path, a, c)
        config["health"] = {"base_cooldown_s": 0.001, "max_cooldown_s": 0.01}
        b = await balancer_for(config=config)
        ids: list[str] = []
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=b.url, limits=limits, timeout=60, trust_env=False) as client:

            async def one(i: int) -> None:
                # 700 distinct requests; the other 300 repeat one of them and may share its flight.
                content = f"question {i % 700}"
                body = {**BODY, "stream": i % 3 != 0, "messages": [{"role": "user", "content": content}]}
                if i % 17 == 0:
                    body = {"model": 5}  # invalid: never reaches a provider
                async with client.stream("POST", "/v1/messages", json=body) as r:
                    ids.append(r.headers["x-balancer-request-id"])
                    if rng.random() < 0.2:
                        return  # leave early: the balancer sees a disconnect
                    await r.aread()

            async with trio.open_nursery() as n:
                for i in range(1000):
                    n.start_soon(one, i)
        rows = await b.ledger_rows(1000)
        assert len(rows) == 1000 and len({r["id"] for r in rows}) == 1000
        assert {r["id"] for r in rows} == set(ids)
        assert any(r["disconnected"] for r in rows)
        assert any(r["status"] == 400 for r in rows)
        assert any(len(r["attempts"]) > 1 for r in rows)
        roles = {r["dedup_role"] for r in rows}
        assert {"leader", "follower"} <= roles or {"leader", "cache"} <= roles
        upstream_calls = sum(len(r["attempts"]) for r in rows if r["dedup_role"] == "leader")
        assert upstream_calls == len(a.received) + len(c.received)  # followers cost nothing upstream


class TestReading:
    async def test_records_survive_a_restart(
        self, tmp_path: Path, nursery: trio.Nursery, upstream: FakeUpstream
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["persist"])))
        config = parse_config(ledger_config(tmp_path, upstream))
        stop = trio.Event()
        async with trio.open_nursery() as first:
            b1 = await start_balancer(first, config, shutdown=stop.wait)
            async with b1.client:
                for _ in range(3):
                    await b1.client.post("/v1/messages", json=BODY)
            stop.set()  # graceful shutdown: the ledger drains before the app exits
        b2 = await start_balancer(nursery, config)
        async with b2.client:
            totals = (await b2.client.get("/usage")).json()["totals"]
        assert totals[0]["requests"] == 3

    async def test_usage_queries_share_one_connection_and_never_migrate(
        self,
        tmp_path: Path,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Each /usage query used to open the store and migrate it; now the writer migrates it
        once at the start and queries read on one connection, opened at the first of them."""
        from trio_balancer.ledger import store as ledger_store

        opened, migrated = 0, 0
        real_init, real_migrate = ledger_store.SqliteStore.__init__, ledger_store.SqliteStore.migrate

        def init(store: ledger_store.SqliteStore, path: str, **kwargs: Any) -> None:
            nonlocal opened
            opened += 1
            real_init(store, path, **kwargs)

        def migrate(store: ledger_store.SqliteStore) -> None:
            nonlocal migrated
            migrated += 1
            real_migrate(store)

        monkeypatch.setattr(ledger_store.SqliteStore, "__init__", init)
        monkeypatch.setattr(ledger_store.SqliteStore, "migrate", migrate)
        upstream.script(lambda _r: Reply(steps=anthropic_text_events(["counted"])))
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        assert (opened, migrated) == (1, 1)  # the writer's store
        for n in range(1, 4):
            await b.client.post("/v1/messages", json=BODY)
            assert len(await b.ledger_rows(n)) == n  # each query sees what was written since the last
            totals = (await b.client.get("/usage", params={"group_by": "model"})).json()["totals"]
            assert totals[0]["requests"] == n
        assert (opened, migrated) == (2, 1)  # and the reader's, unmigrated

    async def test_cli_and_endpoint_agree_with_records(
        self,
        tmp_path: Path,
        nursery: trio.Nursery,
        balancer_for: BalancerFactory,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        a = await FakeUpstream(Reply(steps=anthropic_text_events(["a"], input_tokens=100))).start(nursery)
        c = await FakeUpstream(Reply(steps=anthropic_text_events(["bb"], input_tokens=7))).start(nursery)
        config = ledger_config(tmp_path, a, c)
        config["routes"] = [
            {"match": "*", "strategy": "round_robin", "targets": [{"provider": "p0"}, {"provider": "p1"}]}
        ]
        b = await balancer_for(config=config)
        for model in ["claude-opus-4-6", "claude-haiku-4-5", "claude-opus-4-6", "claude-opus-4-6"]:
            await b.client.post("/v1/messages", json={**BODY, "model": model})
        rows = await b.ledger_rows(4)
        api = (await b.client.get("/usage", params={"group_by": "provider,model"})).json()["totals"]
        assert sum(t["requests"] for t in api) == 4
        for t in api:
            mine = [r for r in rows if r["provider"] == t["provider"] and r["model"] == t["model"]]
            assert t["requests"] == len(mine)
            assert t["input_tokens"] == sum(r["input_tokens"] for r in mine)
            assert t["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine), abs=1e-6)
        assert (
            main(["usage", "--db", f"sqlite:///{tmp_path}/ledger.sqlite3", "--by", "provider,model", "--csv"])
            == 0
        )
        cli = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert {(r["provider"], r["model"], int(r["requests"]), int(r["input_tokens"])) for r in cli} == {
            (t["provider"], t["model"], t["requests"], t["input_tokens"]) for t in api
        }
        assert main(["usage", "--db", str(tmp_path / "ledger.sqlite3"), "--by", "provider"]) == 0
        table = capsys.readouterr().out
        assert table.splitlines()[0].split()[:3] == ["provider", "requests", "input_tokens"]
        assert main(["usage", "--db", str(tmp_path / "nope.sqlite3")]) == 1

    async def test_bad_query(self, balancer: Balancer) -> None:
        r = await balancer.client.get("/usage", params={"since": "not a date"})
        assert r.status_code == 400
        r = await balancer.client.get("/usage", params={"group_by": "secret"})
        assert r.status_code == 400

    @pytest.mark.parametrize(
        ("path", "params", "named"),
        [
            ("/usage/requests", {"offset": "1e23"}, "offset"),
            ("/usage/requests", {"offset": "100000000000000000000000"}, "offset"),
            ("/usage/requests", {"limit": "-1"}, "limit"),
            ("/usage/requests", {"limit": "0"}, "limit"),
            ("/usage/requests", {"limit": "5000"}, "limit"),
            ("/usage/requests", {"flagged": "maybe"}, "flagged"),
            ("/usage", {"since": "1e400"}, "since"),
            ("/usage", {"until": "-1e400"}, "until"),
            ("/usage", {"since": "nan"}, "since"),
            ("/usage/requests", {"until": "99999-01-01"}, "until"),
            ("/usage", {"group_by": "provider,nope"}, "group_by"),
        ],
    )
    async def test_query_parameters_are_400s_naming_the_parameter(
        self, balancer: Balancer, path: str, params: dict[str, str], named: str
    ) -> None:
        r = await balancer.client.get(path, params=params)
        assert r.status_code == 400, r.text
        error = json.loads(r.text)  # strict JSON: no bare Infinity anywhere
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"].startswith(
            f"{named}:"
        )
        assert (await balancer.client.get(path, params={"limit": "1000"})).status_code == 200
