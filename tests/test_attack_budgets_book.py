"""Attack probes on budgets: the pure book, the keeper, the config, the SQLite store.

Tests named ``test_BUG_*`` demonstrate a real bug (they fail against the current source);
the others are probes that held up.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from trio_balancer.app.budgets import BudgetKeeper
from trio_balancer.config import ClientKey, ConfigError, TokenBudget, UsdBudget, parse_config
from trio_balancer.errors import RateLimited
from trio_balancer.ledger import Record, open_store
from trio_balancer.policy.budgets import BudgetExceeded, Spend, SpendBook, periods_at


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def key(name: str = "alice", *, usd_day: float | None = None, usd_month: float | None = None,
        tokens_day: int | None = None, tokens_month: int | None = None) -> ClientKey:  # fmt: skip
    return ClientKey(
        name=name,
        sha256="0" * 64,
        budget_usd=UsdBudget(day=usd_day, month=usd_month),
        tokens=TokenBudget(day=tokens_day, month=tokens_month),
    )


def record(started_at: float, *, cost: float | None = 1.0, tokens: int = 10, client: str = "alice",
           instance: str | None = None, rid: str | None = None) -> Record:  # fmt: skip
    return Record(
        id=rid or f"req_{started_at}_{instance}_{cost}_{tokens}",
        started_at=started_at,
        client=client,
        model="m",
        path="/v1/messages",
        stream=False,
        status=200,
        input_tokens=tokens,
        cost_usd=cost,
        priced=cost is not None,
        instance=instance,
    )


class FailingReader:
    async def spend_by_client(self, *_a: Any, **_k: Any) -> Any:
        raise OSError("the database is away")


class ListReader:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows
        self.calls: list[tuple[Any, ...]] = []

    async def spend_by_client(self, month_start: float, day_start: float, *, excluding: Any = ()) -> Any:
        self.calls.append((month_start, day_start, list(excluding)))
        return self.rows


# -- the keeper --------------------------------------------------------------------------------


async def test_was_bug_a_time_zone_reload_while_the_ledger_is_down_forgets_all_spend() -> None:
    """A reload that changes budget_timezone throws the whole book away (own AND others) and
    relies on the resync to read it back; when that sync fails (ledger away, spill file in use),
    every key's spend is forgotten and an exhausted key is admitted again."""
    now = at("2026-12-15T12:00:00+00:00")  # mid-month: the same month in both zones
    keeper = BudgetKeeper("UTC", "inst-1", clock=lambda: now)
    alice = key(usd_month=5.0)
    keeper.book.replace_others([("alice", periods_at(now, ZoneInfo("UTC")).month, Spend(3.0, 0))], now)
    keeper.recorded(record(now, cost=3.0))
    with pytest.raises(RateLimited):
        keeper.admit(alice)  # $6 of $5: refused
    keeper.set_timezone("Etc/GMT-1")
    await keeper.sync(FailingReader())  # type: ignore[arg-type]
    assert keeper.sync_error is not None
    with pytest.raises(RateLimited):
        keeper.admit(alice)  # (failed before the fix)


async def test_keeper_sync_excludes_its_own_instance_and_reads_the_current_periods() -> None:
    now = at("2026-12-03T12:00:00+00:00")
    keeper = BudgetKeeper("Europe/Berlin", "me", clock=lambda: now)
    reader = ListReader([("alice", 4.0, 40, 2.0, 20)])
    await keeper.sync(reader)  # type: ignore[arg-type]
    ((month_start, day_start, excl),) = reader.calls
    assert excl == ["me"]
    assert month_start == at("2026-12-01T00:00:00+01:00") and day_start == at("2026-12-03T00:00:00+01:00")
    assert keeper.book.spent("alice", now) == {"day": Spend(2.0, 20), "month": Spend(4.0, 40)}


async def test_keeper_a_failed_first_sync_leaves_nothing_to_enforce() -> None:
    """Observation: a balancer that starts while the ledger is away enforces nothing from history
    (documented only as 'the last numbers stand'); sync_error is set but shown nowhere."""
    keeper = BudgetKeeper("UTC", "me")
    await keeper.sync(FailingReader())  # type: ignore[arg-type]
    assert keeper.synced_at is None and keeper.sync_error
    keeper.admit(key(usd_day=0.5))  # admitted: nothing known


def test_was_bug_sync_failure_is_not_shown_on_the_view() -> None:
    """The module doc of app/budgets.py says a failed sync 'keeps the last numbers and says so on
    the view', but view() (the /usage 'budgets' field) carries neither sync_error nor synced_at,
    and nothing else reads them: an operator cannot tell the numbers are stale."""
    keeper = BudgetKeeper("UTC", "me")
    keeper.sync_error = "OSError: the database is away"
    status = keeper.status()
    assert status["sync_error"] == "OSError: the database is away" and status["synced_at"] is None


def test_recorded_counts_estimated_and_unpriced_usage() -> None:
    now = time.time()
    keeper = BudgetKeeper("UTC", "me", clock=lambda: now)
    keeper.recorded(record(now, cost=None, tokens=50))  # unpriced: tokens, no dollars
    assert keeper.book.spent("alice", now)["day"] == Spend(0.0, 50)
    with pytest.raises(RateLimited) as caught:
        keeper.admit(key(tokens_day=50))
    assert int(caught.value.headers["retry-after"]) >= 1  # type: ignore[attr-defined]


# -- the pure book -----------------------------------------------------------------------------


def test_retry_after_is_never_zero_even_a_hair_before_midnight() -> None:
    book = SpendBook(ZoneInfo("UTC"))
    alice = key(usd_day=0.0)
    for now in (at("2026-12-03T23:59:59.999+00:00"), at("2026-12-03T23:59:59+00:00")):
        with pytest.raises(BudgetExceeded) as caught:
            book.check(alice, now)
        assert caught.value.retry_after == 1


@pytest.mark.parametrize(
    "zone, instant, day_hours",
    [
        ("America/Santiago", "2026-09-06T12:00:00-03:00", 23),  # DST starts at midnight: 00:00 skipped
        ("America/Santiago", "2026-04-04T12:00:00-03:00", 25),  # ends at midnight: 23:00 twice
        ("America/Havana", "2026-11-01T12:00:00-05:00", 25),  # 01:00 -> 00:00: midnight twice
        ("Australia/Lord_Howe", "2026-10-04T12:00:00+11:00", 23.5),  # a half-hour DST
        ("Asia/Kathmandu", "2026-12-03T12:00:00+05:45", 24),
        ("Pacific/Chatham", "2026-12-03T12:00:00+13:45", 24),
        ("Pacific/Kiritimati", "2026-12-03T12:00:00+14:00", 24),
        ("Pacific/Apia", "2011-12-31T12:00:00+14:00", 24),  # the day after the skipped 30th
    ],
)
def test_periods_in_odd_zones(zone: str, instant: str, day_hours: float) -> None:
    tz = ZoneInfo(zone)
    now = at(instant)
    p = periods_at(now, tz)
    assert p.day_start <= now < p.day_end
    assert p.month_start <= p.day_start and p.day_end <= p.month_end
    assert p.day_end - p.day_start == day_hours * 3600
    # the day's start is a local midnight, or the first instant of the day if midnight is skipped
    start_local = datetime.fromtimestamp(p.day_start, tz)
    assert start_local.date().isoformat() == p.day
    before = datetime.fromtimestamp(p.day_start - 0.001, tz)
    assert before.date().isoformat() < p.day
    # the next period's start is this one's end
    assert periods_at(p.day_end, tz).day_start == p.day_end
    assert periods_at(p.day_end - 0.001, tz).day == p.day


def test_every_hour_of_a_year_in_dst_zones_falls_in_its_day() -> None:
    for zone in ("America/Santiago", "America/Havana", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Tehran"):
        tz = ZoneInfo(zone)
        t = at("2026-01-01T00:00:00+00:00")
        for _ in range(366 * 24):  # bounded: one year of hours
            p = periods_at(t, tz)
            assert p.day_start <= t < p.day_end, (zone, t)
            assert p.month_start <= t < p.month_end, (zone, t)
            assert datetime.fromtimestamp(t, tz).date().isoformat() == p.day
            t += 3600


def test_a_budget_of_zero_refuses_at_once_and_only_month_works() -> None:
    book = SpendBook(ZoneInfo("UTC"))
    now = time.time()
    with pytest.raises(BudgetExceeded):
        book.check(key(usd_day=0), now)
    with pytest.raises(BudgetExceeded, match="token budget of 0"):
        book.check(key(tokens_day=0), now)
    book.check(key(usd_month=1), now)
    book.add_own("alice", now, Spend(1.0, 0), now)
    with pytest.raises(BudgetExceeded, match="monthly budget"):
        book.check(key(usd_month=1), now)


def test_a_negative_spend_from_a_bug_would_reopen_a_key() -> None:
    """Negative costs cannot come from upstream (usage counts < 0 are dropped) but the book takes them."""
    book = SpendBook(ZoneInfo("UTC"))
    now = time.time()
    book.add_own("alice", now, Spend(5.0, 0), now)
    book.add_own("alice", now, Spend(-5.0, 0), now)
    book.check(key(usd_day=1.0), now)  # held: nothing upstream produces a negative Spend


def test_nan_in_the_book_disables_the_budget() -> None:
    """If a NaN ever reached the book, the key would never be refused again (nan >= x is False)."""
    book = SpendBook(ZoneInfo("UTC"))
    now = time.time()
    book.add_own("alice", now, Spend(math.nan, 0), now)
    book.add_own("alice", now, Spend(100.0, 0), now)
    book.check(key(usd_day=1.0), now)  # admitted: NaN poisons. Whether NaN can arrive: see config tests


# -- config ------------------------------------------------------------------------------------


def base(**extra: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "p", "kind": "anthropic", "base_url": "http://x", "api_key": "k"}],
        **extra,
    }


@pytest.mark.parametrize("value", [math.nan, math.inf, -1])
def test_was_bug_budget_usd_nan_inf_negative(value: float) -> None:
    data = base(server={"client_keys": [{"name": "a", "sha256": "0" * 64, "budget_usd": {"day": value}}]})
    try:
        config = parse_config(data)
    except ConfigError:
        return
    limit = config.server.client_keys[0].budget_usd.day
    assert limit is not None
    assert not math.isnan(limit), "a NaN budget is accepted: it never refuses"


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_was_bug_prices_of_nan_or_inf_reach_the_book(value: float) -> None:
    """A price of nan/inf in [[prices]] makes cost_usd NaN/inf; the keeper adds it as is and a
    NaN budget line is never exhausted (the ledger drops the non-finite cost: storable())."""
    data = base(prices=[{"model": "*", "input": value, "output": value}])
    try:
        parse_config(data)
    except ConfigError:
        return
    pytest.fail(f"price {value} accepted")


def test_budget_timezone_odd_names() -> None:
    for bad in ("", "../etc/passwd", "UTC ", "/usr/share/zoneinfo/UTC"):
        with pytest.raises(ConfigError):
            parse_config(base(server={"budget_timezone": bad}))
    parse_config(base(server={"budget_timezone": "Asia/Kathmandu"}))


def test_duplicate_key_names_share_one_book_entry() -> None:
    data = base(
        server={
            "client_keys": [
                {"name": "a", "sha256": "0" * 64, "budget_usd": {"day": 1}},
                {"name": "a", "sha256": "1" * 64, "budget_usd": {"day": 100}},
            ]
        }
    )
    try:
        parse_config(data)
    except ConfigError:
        return
    pytest.fail("two keys with one name are accepted: they share spend but not limits")


# -- the SQLite store --------------------------------------------------------------------------


def test_sqlite_spend_by_client_nulls_and_old_rows(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path}/l.sqlite3")
    now = at("2026-12-03T12:00:00+00:00")
    store.write(
        [
            record(now, cost=None, tokens=7, instance=None, rid="a"),  # unpriced, old row
            record(now, cost=1.5, tokens=3, instance="other", rid="b"),
            record(now, cost=2.0, tokens=5, instance="me", rid="c"),  # excluded
            record(now - 86400, cost=4.0, tokens=11, instance="other", rid="d"),  # yesterday
            record(at("2026-11-30T23:59:59+00:00"), cost=8.0, tokens=13, rid="e"),  # last month
        ]
    )
    rows = store.spend_by_client(
        at("2026-12-01T00:00:00+00:00"), at("2026-12-03T00:00:00+00:00"), excluding=["me"]
    )
    assert rows == [("alice", 5.5, 21, 1.5, 10)]
    assert store.spend_by_client(0, 0) == [("alice", 15.5, 39, 15.5, 39)]
    store.close()


def test_sqlite_spend_by_client_with_huge_counts(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path}/l.sqlite3")
    now = time.time()
    big = 10**12  # the usage parser's cap
    store.write([
        Record(id=f"r{i}", started_at=now, client="alice", model="m", path="/v1/messages", stream=False,
               status=200, input_tokens=big, output_tokens=big, cache_creation_input_tokens=big,
               cache_read_input_tokens=big, cost_usd=1e9, instance="x")
        for i in range(3)
    ])  # fmt: skip
    rows = store.spend_by_client(0, 0)
    assert rows[0][2] == 12 * big
    store.close()


def test_cli_budget_rows_month_only_odd_zone_and_old_rows(tmp_path: Any, capsys: Any) -> None:
    from trio_balancer.cli import main

    db = tmp_path / "l.sqlite3"
    store = open_store(f"sqlite:///{db}")
    now = time.time()
    store.write([record(now, cost=2.5, tokens=10, instance=None, rid="old"),
                 record(now, cost=None, tokens=5, instance="i1", rid="unpriced"),
                 record(now, cost=1.0, tokens=1, client="bob", instance="i2", rid="bob")])  # fmt: skip
    store.close()
    path = tmp_path / "c.toml"
    path.write_text(
        f"[server]\nbudget_timezone = 'Asia/Kathmandu'\n[ledger]\nurl = 'sqlite:///{db}'\n"
        f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{'0' * 64}'\nbudget_usd = {{ month = 2 }}\n"
        f"[[server.client_keys]]\nname = 'carol'\nsha256 = '{'1' * 64}'\ntokens = {{ day = 0 }}\n"
        "[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = 'http://x'\napi_key = 'k'\n"
    )
    assert main(["usage", "--config", str(path), "--by", "client", "--csv"]) == 0
    out = capsys.readouterr().out
    _totals, budgets = out.strip().split("\n\n")
    lines = [row.split(",") for row in budgets.splitlines()[1:]]
    by = {(r[0], r[1]): r for r in lines}
    assert set(by) == {("alice", "usd/month"), ("carol", "tokens/day")}
    alice = by["alice", "usd/month"]
    assert float(alice[3]) == pytest.approx(2.5) and float(alice[4]) == 0 and alice[5].endswith("+05:45")
    assert alice[5][8:19] == "01T00:00:00"  # the first of next month, local midnight
    carol = by["carol", "tokens/day"]
    assert float(carol[3]) == 0 and float(carol[4]) == 0
    # the table form too
    assert main(["usage", "--config", str(path), "--by", "client"]) == 0
    assert "usd/month" in capsys.readouterr().out


def test_was_bug_retry_after_points_at_midnight_when_the_month_is_spent_too() -> None:
    """With both the day and the month spent, check() reports the first exhausted line (the
    day): the 429 says the key 'resets' at midnight and retry-after is to midnight, but at
    midnight the monthly budget still refuses it. retry-after should be to the latest reset of
    the exhausted budgets (here the month's end); the client is told to come back too early."""
    book = SpendBook(ZoneInfo("UTC"))
    now = at("2026-12-03T12:00:00+00:00")
    book.add_own("alice", now, Spend(5.0, 0), now)
    alice = key(usd_day=1.0, usd_month=2.0)
    with pytest.raises(BudgetExceeded) as caught:
        book.check(alice, now)
    month_end = at("2027-01-01T00:00:00+00:00")
    assert caught.value.retry_after == month_end - now, str(caught.value)


def test_was_bug_token_budget_with_an_earlier_reset_hides_a_longer_usd_one() -> None:
    """Same with the day's token budget spent and the month's dollars spent."""
    book = SpendBook(ZoneInfo("UTC"))
    now = at("2026-12-03T12:00:00+00:00")
    book.add_own("alice", now, Spend(5.0, 100), now)
    alice = key(usd_month=2.0, tokens_day=100)
    with pytest.raises(BudgetExceeded) as caught:
        book.check(alice, now)
    assert caught.value.retry_after == at("2027-01-01T00:00:00+00:00") - now, str(caught.value)
