"""Budgets per client key: calendar periods, the spend book, and the balancer refusing a key
that spent its budget (streamed and JSON spend alike), across restarts and instances."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio

from trio_balancer.config import ClientKey, TokenBudget, UsdBudget, load_config
from trio_balancer.policy.auth import new_key
from trio_balancer.policy.budgets import BudgetExceeded, Spend, SpendBook, periods_at

from .fakes import JSON_HEADERS, FakeUpstream, Received, Reply, anthropic_message, anthropic_text_events
from .helpers import PROVIDER_KEY, Balancer, BalancerFactory, assert_error, message_body, start_balancer

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class TestPeriods:
    def test_a_utc_day_and_month(self) -> None:
        p = periods_at(at("2026-12-03T13:00:00+00:00"), UTC_ZONE)
        assert (p.day, p.month) == ("2026-12-03", "2026-12")
        assert p.day_start == at("2026-12-03T00:00:00+00:00") and p.day_end == at("2026-12-04T00:00:00+00:00")
        assert p.month_start == at("2026-12-01T00:00:00+00:00") and p.month_end == at(
            "2027-01-01T00:00:00+00:00"
        )

    def test_the_operators_midnight_not_utcs(self) -> None:
        # 23:30 UTC on the 3rd is already the 4th in Berlin.
        p = periods_at(at("2026-12-03T23:30:00+00:00"), BERLIN)
        assert p.day == "2026-12-04" and p.day_start == at("2026-12-04T00:00:00+01:00")

    def test_a_dst_day_is_23_hours_long(self) -> None:
        p = periods_at(at("2026-03-29T12:00:00+02:00"), BERLIN)
        assert p.day_end - p.day_start == 23 * 3600

    def test_february_and_a_leap_year(self) -> None:
        p = periods_at(at("2028-02-29T10:00:00+00:00"), UTC_ZONE)
        assert p.month_end == at("2028-03-01T00:00:00+00:00")


def key(name: str = "alice", *, usd_day: float | None = None, usd_month: float | None = None,
        tokens_day: int | None = None) -> ClientKey:  # fmt: skip
    return ClientKey(
        name=name,
        sha256="0" * 64,
        budget_usd=UsdBudget(day=usd_day, month=usd_month),
        tokens=TokenBudget(day=tokens_day),
    )


NOON = at("2026-12-03T12:00:00+00:00")


class TestSpendBook:
    def test_admitted_while_something_is_left_refused_after(self) -> None:
        book, alice = SpendBook(UTC_ZONE), key(usd_day=2.0)
        book.check(alice, NOON)
        book.add_own("alice", NOON, Spend(1.99, 10), NOON)
        book.check(alice, NOON)  # 0.01 left: admitted (its own cost counts when it ends)
        book.add_own("alice", NOON, Spend(0.5, 10), NOON)
        with pytest.raises(BudgetExceeded) as caught:
            book.check(alice, NOON)
        message = str(caught.value)
        assert "alice" in message and "daily budget of $2.00" in message and "$2.4900 spent" in message
        assert "2026-12-04T00:00:00+00:00" in message
        assert caught.value.retry_after == 12 * 3600

    def test_the_others_and_our_own_add_up(self) -> None:
        book, alice = SpendBook(UTC_ZONE), key(usd_month=10.0)
        book.replace_others([("alice", "2026-12", Spend(9.0, 0))], NOON)
        book.check(alice, NOON)
        book.add_own("alice", NOON, Spend(1.0, 0), NOON)
        with pytest.raises(BudgetExceeded, match="monthly budget"):
            book.check(alice, NOON)
        assert book.spent("alice", NOON)["month"] == Spend(10.0, 0)
        book.replace_others([], NOON)  # the ledger's word replaces, never adds to, the last
        book.check(alice, NOON)

    def test_tokens_count_input_output_and_cache(self) -> None:
        book, alice = SpendBook(UTC_ZONE), key(tokens_day=100)
        book.add_own("alice", NOON, Spend(0.0, 100), NOON)
        with pytest.raises(BudgetExceeded, match="daily token budget of 100"):
            book.check(alice, NOON)

    def test_a_new_day_reopens_the_key_and_the_month_remembers(self) -> None:
        book, alice = SpendBook(UTC_ZONE), key(usd_day=1.0, usd_month=1.5)
        book.add_own("alice", NOON, Spend(1.0, 0), NOON)
        with pytest.raises(BudgetExceeded):
            book.check(alice, NOON)
        tomorrow = NOON + 86400
        book.check(alice, tomorrow)
        book.add_own("alice", tomorrow, Spend(0.5, 0), tomorrow)
        with pytest.raises(BudgetExceeded, match="monthly"):
            book.check(alice, tomorrow)
        assert book.spent("alice", tomorrow) == {"day": Spend(0.5, 0), "month": Spend(1.5, 0)}

    def test_a_request_counts_in_the_period_it_started_in(self) -> None:
        book, alice = SpendBook(UTC_ZONE), key(usd_day=1.0)
        midnight = at("2026-12-04T00:00:00+00:00")
        book.add_own("alice", midnight - 10, Spend(5.0, 0), midnight + 10)  # started yesterday
        book.check(alice, midnight + 10)

    def test_other_keys_are_unaffected(self) -> None:
        book = SpendBook(UTC_ZONE)
        book.add_own("alice", NOON, Spend(5.0, 0), NOON)
        book.check(key("bob", usd_day=1.0), NOON)

    def test_a_key_without_budgets_is_never_refused(self) -> None:
        book = SpendBook(UTC_ZONE)
        book.add_own("alice", NOON, Spend(1e9, 10**12), NOON)
        book.check(key(), NOON)


# -- the balancer ------------------------------------------------------------------------------

ALICE, ALICE_SHA = new_key()
BOB, BOB_SHA = new_key()
TEXT = "hello world!"  # 3 output tokens
# $0.10 a token: a streamed answer is 12 + 3 tokens ($1.50), a JSON one 10 + 3 ($1.30).
PRICES = [{"model": "*", "input": 100_000, "output": 100_000}]


def answer(r: Received) -> Reply:
    """Streamed or JSON, as asked."""
    if json.loads(r.body).get("stream"):
        return Reply(steps=anthropic_text_events([TEXT]))
    return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message(TEXT)).encode()])


def budgeted(upstream: FakeUpstream, **server: Any) -> dict[str, Any]:
    return {
        "server": {
            "client_keys": [
                {"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 3, "month": 100}},
                {"name": "bob", "sha256": BOB_SHA, "budget_usd": {"day": 3}, "tokens": {"day": 1000}},
            ],
            **server,
        },
        "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}],
        "prices": PRICES,
    }


async def ask(b: Balancer, who: str, *, stream: bool) -> Any:
    headers = {"x-api-key": who, "x-balancer-no-dedup": "1"}
    return await b.client.post("/v1/messages", json=message_body(stream=stream), headers=headers)


def next_utc_midnight() -> float:
    return periods_at(time.time(), UTC_ZONE).day_end


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    return await FakeUpstream(answer).start(nursery)


async def spend_alice(b: Balancer) -> None:
    """$1.50 + $1.30 (left: $0.20, admitted) + $1.50: alice is over her $3 day."""
    for stream in (True, False, True):
        r = await ask(b, ALICE, stream=stream)
        assert r.status_code == 200, r.text


class TestBalancer:
    async def test_a_key_over_its_day_is_refused_until_midnight_others_go_on(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(config=budgeted(upstream))
        await spend_alice(b)
        r = await ask(b, ALICE, stream=True)
        body = assert_error(r, 429, "rate_limit_error")
        message = body["error"]["message"]
        assert "daily budget of $3.00" in message and "$4.3000 spent" in message, message
        assert abs(int(r.headers["retry-after"]) - (next_utc_midnight() - time.time())) < 60
        assert len(upstream.received) == 3  # the refused request never left
        assert (await ask(b, BOB, stream=False)).status_code == 200
        # Counting costs nothing: still answered.
        count = await b.client.post(
            "/v1/messages/count_tokens", json=message_body(), headers={"x-api-key": ALICE}
        )
        assert count.status_code != 429
        rows = await b.ledger_rows(6)
        refused = [row for row in rows if row["status"] == 429]
        assert len(refused) == 1 and refused[0]["client"] == "alice" and refused[0]["provider"] is None

    async def test_the_view_and_usage_show_what_is_left(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(config=budgeted(upstream))
        assert (await ask(b, BOB, stream=True)).status_code == 200
        await b.ledger_rows(1)
        usage = (await b.client.get("/usage", params={"group_by": "client"})).json()
        bob = next(item for item in usage["budgets"] if item["client"] == "bob")
        lines = {(line["what"], line["period"]): line for line in bob["budgets"]}
        assert lines["usd", "day"]["spent"] == pytest.approx(1.5) and lines["usd", "day"][
            "left"
        ] == pytest.approx(1.5)
        assert lines["tokens", "day"]["spent"] == 15 and lines["tokens", "day"]["left"] == 985
        (total,) = [t for t in usage["totals"] if t["client"] == "bob"]
        assert total["cost_usd"] == pytest.approx(lines["usd", "day"]["spent"])

    async def test_a_restarted_balancer_remembers_the_spend(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        first = await balancer_for(config=budgeted(upstream))
        await spend_alice(first)
        await first.ledger_rows(3)
        again = await balancer_for(config=budgeted(upstream))  # the same ledger file
        assert_error(await ask(again, ALICE, stream=True), 429, "rate_limit_error")
        assert (await ask(again, BOB, stream=True)).status_code == 200

    async def test_two_instances_on_one_ledger_enforce_one_budget(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        one = await balancer_for(config=budgeted(upstream))
        two = await balancer_for(config=budgeted(upstream))
        assert (await ask(one, ALICE, stream=True)).status_code == 200  # $1.50 on one
        assert (await ask(two, ALICE, stream=False)).status_code == 200  # $1.30 on two
        await one.ledger_rows(1)
        await two.ledger_rows(1)
        for b in (one, two):  # what budget_sync_s does on its own
            assert b.app.ledger is not None
            await b.app.state.budgets.sync(b.app.ledger.reader)
        assert (await ask(one, ALICE, stream=True)).status_code == 200  # $0.20 left: admitted
        await one.ledger_rows(2)
        await two.app.state.budgets.sync(two.app.ledger.reader)  # type: ignore[union-attr]
        assert_error(await ask(two, ALICE, stream=True), 429, "rate_limit_error")
        assert_error(await ask(one, ALICE, stream=True), 429, "rate_limit_error")

    async def test_midnight_reopens_the_key(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(config=budgeted(upstream))
        await spend_alice(b)
        assert_error(await ask(b, ALICE, stream=True), 429, "rate_limit_error")
        budgets = b.app.state.budgets
        budgets.clock = lambda: next_utc_midnight() + 1  # the injected wall clock crosses midnight
        assert (await ask(b, ALICE, stream=True)).status_code == 200

    async def test_a_reload_keeps_the_spend_even_in_another_time_zone(
        self, upstream: FakeUpstream, nursery: trio.Nursery, tmp_path: Path
    ) -> None:
        path = tmp_path / "balancer.toml"

        def write(timezone: str) -> None:
            path.write_text(
                f"[server]\nbudget_timezone = '{timezone}'\n"
                f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{ALICE_SHA}'\nbudget_usd = {{ day = 3 }}\n"
                f"[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = '{upstream.url}'\n"
                f"api_key = '{PROVIDER_KEY}'\n"
                "[[prices]]\nmodel = '*'\ninput = 100000\noutput = 100000\n"
            )

        write("UTC")
        b = await start_balancer(nursery, load_config(path))
        async with b.client:
            await spend_alice(b)
            await b.app.reload()
            assert_error(await ask(b, ALICE, stream=True), 429, "rate_limit_error")
            await b.ledger_rows(4)
            write("Etc/GMT-1")  # a calendar an hour ahead: a new book, read back from the ledger
            await b.app.reload()
            assert b.app.ledger is not None
            await b.app.state.budgets.sync(b.app.ledger.reader)
            if periods_at(time.time(), ZoneInfo("Etc/GMT-1")).day == periods_at(time.time(), UTC_ZONE).day:
                assert_error(await ask(b, ALICE, stream=True), 429, "rate_limit_error")


def test_a_budget_without_a_ledger_is_a_config_error() -> None:
    from trio_balancer.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"client_keys\[0\].*enable \[ledger\]"):
        parse_config(
            {
                "server": {"client_keys": [{"name": "a", "sha256": ALICE_SHA, "budget_usd": {"day": 1}}]},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": "http://x", "api_key": "k"}],
                "ledger": {"enabled": False},
            }
        )


def test_time_zone_names_are_checked() -> None:
    from trio_balancer.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="budget_timezone: must be an IANA time zone name"):
        parse_config(
            {
                "server": {"budget_timezone": "Mars/Olympus"},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": "http://x", "api_key": "k"}],
            }
        )


def test_utc_now_helper_is_sane() -> None:
    assert next_utc_midnight() > datetime.now(UTC).timestamp()


async def test_usage_by_client_shows_spend_against_each_budget(
    upstream: FakeUpstream, nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_balancer.cli import main

    path = tmp_path / "balancer.toml"
    path.write_text(
        f"[ledger]\nurl = 'sqlite:///{tmp_path}/ledger.sqlite3'\n"
        f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{ALICE_SHA}'\n"
        "budget_usd = { day = 3, month = 100 }\ntokens = { day = 5_000_000 }\n"
        f"[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = '{upstream.url}'\napi_key = '{PROVIDER_KEY}'\n"
        "[[prices]]\nmodel = '*'\ninput = 100000\noutput = 100000\n"
    )
    b = await start_balancer(nursery, load_config(path))
    async with b.client:
        await spend_alice(b)
        await b.ledger_rows(3)
    capsys.readouterr()
    assert main(["usage", "--config", str(path), "--by", "client", "--csv"]) == 0
    out = capsys.readouterr().out
    totals, budgets = out.strip().split("\n\n")
    assert "alice,3," in totals  # three requests
    lines = {row.split(",")[1]: row.split(",") for row in budgets.splitlines()[1:]}
    assert set(lines) == {"usd/day", "usd/month", "tokens/day"}
    assert float(lines["usd/day"][3]) == pytest.approx(4.3) and float(lines["usd/day"][4]) == 0
    assert float(lines["usd/month"][4]) == pytest.approx(95.7)
    assert int(float(lines["tokens/day"][3])) == 43
    assert lines["usd/day"][5].endswith("+00:00")
