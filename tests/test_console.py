"""The operator console: its numbers equal /usage and the CLI, its queries use indexes, its pages
escape what clients chose, filter and page; and the hourly rollup equals the records."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio

from trio_balancer.app.console import local_offsets, range_start
from trio_balancer.config import load_config
from trio_balancer.ledger import Record, open_store
from trio_balancer.ledger.queries import RecordFilter, browse_sql, series_sql
from trio_balancer.ledger.record import COLUMNS
from trio_balancer.ledger.sample import fill
from trio_balancer.policy.auth import new_key
from trio_balancer.policy.budgets import periods_at

from .helpers import Balancer, start_balancer

BERLIN = ZoneInfo("Europe/Berlin")
ADMIN, ADMIN_SHA = new_key()


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class TestLocalTime:
    def test_offsets_change_at_the_dst_hour(self) -> None:
        # Berlin leaves summer time at 01:00 UTC on 2026-10-25.
        pairs = local_offsets(at("2026-10-20T00:00:00+00:00"), at("2026-10-30T00:00:00+00:00"), BERLIN)
        assert pairs == [(at("2026-10-25T01:00:00+00:00"), 7200), (None, 3600)]

    def test_one_offset_without_dst(self) -> None:
        assert local_offsets(at("2026-12-01T00:00:00+00:00"), at("2026-12-03T00:00:00+00:00"), BERLIN) == [
            (None, 3600)
        ]

    def test_range_start_is_a_local_midnight(self) -> None:
        start = range_start(at("2026-12-03T12:00:00+00:00"), BERLIN, 30, 86400)
        assert start == at("2026-11-04T00:00:00+01:00")
        assert range_start(at("2026-12-03T12:30:00+00:00"), BERLIN, 48, 3600) == at(
            "2026-12-01T13:00:00+00:00"
        )


def test_status_filter_is_checked() -> None:
    assert RecordFilter(status="ok").problem() is None
    assert RecordFilter(status="429").problem() is None
    assert RecordFilter(status="nope").problem() is not None


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 records over 30 days (the bench measures 100,000: bench/console.py)."""
    path = tmp_path_factory.mktemp("console") / "ledger.sqlite3"
    store = open_store(f"sqlite:///{path}")
    try:
        fill(store, 5_000)
    finally:
        store.close()
    return path


class TestRollup:
    def test_each_local_day_of_the_rollup_equals_the_records(self, filled: Path) -> None:
        store = open_store(f"sqlite:///{filled}")
        try:
            now = time.time()
            since = range_start(now, BERLIN, 30, 86400)
            offsets = local_offsets(since, now, BERLIN)
            rows = store.series(RecordFilter(since=since, until=now + 3600), width_s=86400, offsets=offsets)
            assert len(rows) >= 29
            for row in rows:
                # The bucket's local date; its bounds as the budgets' calendar has them.
                day = datetime.fromtimestamp(row["bucket"] * 86400, UTC).date()
                start = datetime(day.year, day.month, day.day, tzinfo=BERLIN).timestamp()
                (raw,) = store.summary(start, periods_at(start, BERLIN).day_end, [])
                assert row["requests"] == raw["requests"]
                assert row["cost_usd"] == pytest.approx(raw["cost_usd"], abs=1e-5)
                tokens = raw["input_tokens"] + raw["output_tokens"] + raw["cache_creation_input_tokens"]
                assert row["tokens"] == tokens + raw["cache_read_input_tokens"]
                assert row["errors"] == raw["errors"] and row["flagged"] == raw["flagged"]
        finally:
            store.close()

    def test_a_record_written_twice_is_counted_once(self, tmp_path: Path) -> None:
        store = open_store(f"sqlite:///{tmp_path / 'l.sqlite3'}")
        try:
            r = Record(id="r1", started_at=1000.0, client="a", model="m", path="/v1/messages", stream=True,
                       status=200, input_tokens=5, cost_usd=0.5)  # fmt: skip
            store.write([r])
            store.write([r])  # a spill file drained after a crash writes it again
            rows = store.series(RecordFilter(), width_s=3600, offsets=[(None, 0)])
            assert [(x["requests"], x["tokens"], x["cost_usd"]) for x in rows] == [(1, 5, 0.5)]
        finally:
            store.close()

    def test_the_migration_back_fills_a_ledger_written_before_it(self, tmp_path: Path) -> None:
        import sqlite3

        from trio_balancer.ledger.migrations import SQLITE_MIGRATIONS

        path = tmp_path / "old.sqlite3"
        conn = sqlite3.connect(path)
        for number, script in enumerate(SQLITE_MIGRATIONS[:4], start=1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        conn.execute(
            "INSERT INTO requests (id, started_at, client, path, stream, status, input_tokens, usage_source,"
            " cost_usd, priced, dedup_role, disconnected, attempts) VALUES"
            " ('old', 7200.5, 'a', '/v1/messages', 1, 200, 7, 'reported', 0.25, 1, 'off', 0, '[]')"
        )
        conn.commit()
        conn.close()
        store = open_store(f"sqlite:///{path}")
        try:
            rows = store.series(RecordFilter(), width_s=3600, offsets=[(None, 0)])
            assert [(x["bucket"], x["requests"], x["tokens"]) for x in rows] == [(2, 1, 7)]
        finally:
            store.close()


class TestQueryPlans:
    """Every console query is a SEARCH on an index, never a SCAN of the records."""

    @pytest.mark.parametrize(
        "f",
        [
            RecordFilter(),
            RecordFilter(client="bob"),
            RecordFilter(model="glm-4.6", status="error"),
            RecordFilter(provider="vertex", since=0.0),
            RecordFilter(flagged=True),
            RecordFilter(since=time.time() - 86400),
        ],
        ids=["newest", "key", "model-errors", "provider-since", "flagged", "since"],
    )
    def test_request_pages(self, filled: Path, f: RecordFilter) -> None:
        store = open_store(f"sqlite:///{filled}")
        try:
            for before in (None, (time.time(), "req_z")):
                plan = " | ".join(
                    store.plan(*browse_sql(f, columns=COLUMNS, before=before, limit=51, mark="?"))
                )
                # A SEARCH on an index, or a walk down one in its order that stops at the page's
                # end (the newest page): never a scan of the table.
                assert "USING INDEX" in plan, plan
                assert all("USING" in step for step in plan.split(" | ") if "SCAN requests" in step), plan
        finally:
            store.close()

    @pytest.mark.parametrize("group", [None, "client", "model", "provider"])
    def test_series(self, filled: Path, group: str | None) -> None:
        store = open_store(f"sqlite:///{filled}")
        try:
            f = RecordFilter(since=time.time() - 30 * 86400)
            sql, args = series_sql(f, width_s=86400, offsets=[(time.time() - 86400, 3600), (None, 7200)],
                                   group=group, mark="?", floor_div=store.floor_div)  # fmt: skip
            plan = " | ".join(store.plan(sql, args))
            assert "SEARCH usage_hours USING" in plan, plan
        finally:
            store.close()


# -- the pages, served -------------------------------------------------------------------------


def console_config(tmp_path: Path, ledger: Path, *, admin: bool = False) -> Path:
    path = tmp_path / "balancer.toml"
    path.write_text(
        "[server]\nbudget_timezone = 'Europe/Berlin'\n"
        + (f"admin_key_sha256 = '{ADMIN_SHA}'\n" if admin else "")
        + f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{'0' * 64}'\nbudget_usd = {{ day = 20, month = 300 }}\n"
        f"[ledger]\nurl = 'sqlite:///{ledger}'\n"
        "[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = 'http://127.0.0.1:9'\napi_key = 'sk-x'\n"
    )
    return path


@pytest.fixture
async def console(nursery: trio.Nursery, tmp_path: Path, filled: Path) -> Any:
    ledger = tmp_path / "ledger.sqlite3"
    ledger.write_bytes(filled.read_bytes())
    b = await start_balancer(nursery, load_config(console_config(tmp_path, ledger)))
    yield b
    await b.client.aclose()


class TestPages:
    async def test_the_overview_equals_usage_for_the_same_range(self, console: Balancer) -> None:
        for span, by in (("30d", "client"), ("48h", "model"), ("30d", "provider")):
            r = await console.client.get("/console", params={"range": span, "by": by, "format": "json"})
            assert r.status_code == 200, r.text
            o = r.json()
            # The range runs to now: /usage from the same start says the same.
            params = {"since": o["since"], "group_by": by}
            usage = (await console.client.get("/usage", params=params)).json()
            by_usage = {row[by]: row for row in usage["totals"]}
            by_console: dict[str, dict[str, float]] = {}
            for row in o["split"]:
                acc = by_console.setdefault(row[by] or None, {"requests": 0, "cost_usd": 0.0})
                acc["requests"] += row["requests"]
                acc["cost_usd"] += row["cost_usd"]
            assert set(by_console) == set(by_usage)
            for name, acc in by_console.items():
                assert acc["requests"] == by_usage[name]["requests"], (span, by, name)
                assert acc["cost_usd"] == pytest.approx(by_usage[name]["cost_usd"], abs=1e-4)
            assert sum(r["requests"] for r in o["totals"]) == sum(r["requests"] for r in usage["totals"])

    async def test_pages_render_with_charts_and_budgets(self, console: Balancer) -> None:
        r = await console.client.get("/console")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        page = r.text
        assert page.count("<svg") == 3 and page.count("<rect") > 90
        assert ("alice" in page and "daily" not in page) or "usd / day" in page
        assert "<script" not in page
        health = await console.client.get("/console/health")
        assert health.status_code == 200 and "Providers now" in health.text

    async def test_requests_filter_and_page_without_gaps(self, console: Balancer) -> None:
        seen: list[str] = []
        url, params = "/console/requests", {"client": "bob", "status": "ok"}
        params_now: dict[str, str] | None = params
        for _ in range(200):  # bounded: bob has ~1,500 records, 50 a page
            r = await console.client.get(url, params=params_now)
            assert r.status_code == 200, r.text
            ids = re.findall(r'href="/console/requests/(req_fill_\d+)"', r.text)
            rows = re.findall(
                r"<tr><td><a href=\"/console/requests/[^\"]+\">[^<]+</a></td><td>([^<]+)</td>", r.text
            )
            assert set(rows) <= {"bob"}
            seen += ids
            older = re.search(r'rel="next" href="([^"]+)"', r.text)
            if older is None:
                break
            url, params_now = older.group(1).replace("&amp;", "&"), None  # the link carries the filter
        store_path = console.app.config.ledger.url.removeprefix("sqlite:///")
        store = open_store(f"sqlite:///{store_path}")
        try:
            expected = [
                row["id"] for row in store.browse(RecordFilter(client="bob", status="ok"), limit=100_000)
            ]
        finally:
            store.close()
        assert seen == expected and len(seen) > 100

    async def test_one_request_shows_why_it_failed_over(self, console: Balancer) -> None:
        store = open_store(console.app.config.ledger.url)
        try:
            rows = [r for r in store.browse(RecordFilter(), limit=2000) if len(r["attempts"]) == 2]
        finally:
            store.close()
        r = await console.client.get(f"/console/requests/{rows[0]['id']}")
        assert r.status_code == 200 and "HTTP 529 overloaded_error" in r.text and "served" in r.text
        assert (await console.client.get("/console/requests/nope")).status_code == 404

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"status": "nope"}, "status"),
            ({"since": "yesterday"}, "since"),
            ({"before": "x"}, "before"),
            ({"client": "a" * 300}, "client"),
        ],
    )
    async def test_bad_filters_are_a_400_naming_the_field(
        self, console: Balancer, params: dict[str, str], field: str
    ) -> None:
        r = await console.client.get("/console/requests", params=params)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(field), r.text
        bad = await console.client.get("/console", params={"range": "7y"})
        assert bad.status_code == 400 and "range" in bad.json()["error"]["message"]


async def test_what_clients_chose_is_escaped(nursery: trio.Nursery, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    store = open_store(f"sqlite:///{ledger}")
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    store.write([Record(id="r-evil", started_at=time.time() - 60, client="a", model=evil, path="/v1/messages",
                        stream=True, status=200, provider="p", input_tokens=3, cost_usd=0.1)])  # fmt: skip
    store.close()
    b = await start_balancer(nursery, load_config(console_config(tmp_path, ledger)))
    async with b.client:
        for url in ("/console?by=model", "/console/requests", "/console/requests/r-evil"):
            page = (await b.client.get(url)).text
            assert "<script>alert" not in page and "<img src=x" not in page, url
            assert "&lt;script&gt;" in page, url


async def test_the_console_is_behind_the_admin_key(
    nursery: trio.Nursery, tmp_path: Path, filled: Path
) -> None:
    b = await start_balancer(nursery, load_config(console_config(tmp_path, filled, admin=True)))
    async with b.client:
        for url in ("/console", "/console/requests", "/console/health", "/console/requests/x"):
            assert (await b.client.get(url)).status_code in (401, 403), url
        ok = await b.client.get("/console/health", headers={"x-api-key": ADMIN})
        assert ok.status_code == 200


async def test_the_health_page_shows_cooldowns_and_failovers(nursery: trio.Nursery, tmp_path: Path) -> None:
    from .fakes import FakeUpstream, Reply, anthropic_text_events, error_reply
    from .helpers import message_body

    bad = await FakeUpstream(error_reply(529, "overloaded_error", "Overloaded")).start(nursery)
    good = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    path = tmp_path / "b.toml"
    path.write_text(
        "".join(
            f"[[providers]]\nname = '{n}'\nkind = 'anthropic'\nbase_url = '{u.url}'\napi_key = 'sk-x'\n"
            for n, u in (("first", bad), ("second", good))
        )
    )
    b = await start_balancer(nursery, load_config(path))
    async with b.client:
        r = await b.client.post(
            "/v1/messages", json=message_body(stream=True), headers={"x-balancer-no-dedup": "1"}
        )
        assert r.status_code == 200
        page = (await b.client.get("/console/health")).text
        assert "cooling" in page and "HTTP 529 overloaded_error" in page  # the state change, and why
        assert "<svg" in page and "first: 1" in page  # one failover away from it this hour
        assert "overloaded 1" in page  # by reason


def test_health_history_is_bounded_and_hourly() -> None:
    from trio_balancer.policy.health_history import HealthHistory

    h = HealthHistory(max_events=3, hours=2)
    for i in range(5):
        h.changed(float(i), "p", "cooling" if i % 2 == 0 else "healthy", 30.0, "x")
    assert [e.at for e in h.events()] == [4.0, 3.0, 2.0]
    h.changed(5.0, "q", "healthy", 0.0, None)
    h.changed(6.0, "q", "healthy", 0.0, None)  # no change: not an event
    assert [e.at for e in h.events("q")] == [5.0]
    h.failover(0.0, "p", "overloaded")
    h.failover(3600.0, "p", "overloaded")
    h.failover(7300.0, "p", "rate_limited")  # the first hour is now out of the window
    assert h.failovers_per_hour(7300.0) == {"p": [1, 1]}
    assert h.reasons("p") == {"overloaded": 2, "rate_limited": 1}
