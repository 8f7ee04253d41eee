"""Attack probes on budgets over PostgreSQL: spend_by_client's SQL.

Tests named ``test_BUG_*`` demonstrate a real bug (they fail against the current source).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from trio_balancer.ledger import Record, open_store

from .cluster.servers import PgServer


@pytest.fixture(scope="module")
def pg_srv() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_srv: PgServer) -> Iterator[str]:
    if pg_srv.proc is None:
        pg_srv.start()
    yield pg_srv.url
    if pg_srv.proc is None:
        pg_srv.start()


@pytest.fixture
def store(pg_url: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    s = open_store(pg_url)
    yield s
    s.close()


def rec(rid: str, started_at: float, *, cost: float | None = 1.0, instance: str | None = "x",
        client: str = "alice", **tokens: int) -> Record:  # fmt: skip
    return Record(id=rid, started_at=started_at, client=client, model="m", path="/v1/messages",
                  stream=False, status=200, cost_usd=cost, priced=cost is not None, instance=instance,
                  **tokens)  # fmt: skip


def test_pg_spend_by_client_nulls_old_rows_and_exclusion(store: Any) -> None:
    now = time.time()
    store.write(
        [
            rec("a", now, cost=None, instance=None, input_tokens=7),
            rec("b", now, cost=1.5, instance="other", input_tokens=3),
            rec("c", now, cost=2.0, instance="me", input_tokens=5),
            rec("d", now - 10 * 86400, cost=4.0, instance="other", input_tokens=11),
        ]
    )
    rows = store.spend_by_client(now - 20 * 86400, now - 60, excluding=["me"])
    assert rows == [("alice", 5.5, 21, 1.5, 10)]
    assert all(type(v) in (str, float, int) for v in rows[0])
    assert store.spend_by_client(now + 1, now + 1) == []


def test_was_bug_pg_one_lying_record_breaks_every_budget_sync(store: Any) -> None:
    """The tokens columns are INTEGER (int4) on PostgreSQL, and spend_by_client adds the four of
    a row (``input_tokens + output_tokens + ...``) in int4 before summing: one record whose
    counts are each storable (< 2**31) but add past 2**31 (an upstream reporting 2e9 input and
    2e9 output; the usage parser caps at 10**12 only) makes the query fail with 'integer out of
    range'. Every instance's sync then fails for the rest of the month: new instances start with
    an empty book (no budget enforced from history), running ones never see each other again."""
    now = time.time()
    store.write(
        [
            rec("ok", now, cost=1.0, input_tokens=10),
            rec("liar", now, cost=1.0, input_tokens=2_000_000_000, output_tokens=2_000_000_000),
        ]
    )
    rows = store.spend_by_client(now - 86400, now - 60)
    assert rows[0][2] == 4_000_000_010


def test_was_bug_pg_a_count_the_parser_accepts_is_refused_by_the_table(store: Any) -> None:
    """Usage counts up to 10**12 are accepted (MAX_TOKENS_REPORTED) and record_row keeps counts
    within 2**62 ('SQLite and PostgreSQL BIGINT'), but PostgreSQL's token columns are INTEGER:
    a record with 3e9 output tokens is refused, so its spend is counted by the instance that
    served it and never reaches the ledger (gone after a restart, never seen by the others)."""
    store.write([rec("big", time.time(), output_tokens=3_000_000_000)])
    assert store.count() == 1


# -- the balancer on PostgreSQL ----------------------------------------------------------------

import json  # noqa: E402

import trio  # noqa: E402

from trio_balancer.config import parse_config  # noqa: E402
from trio_balancer.policy.auth import new_key  # noqa: E402

from .fakes import JSON_HEADERS, FakeUpstream, Received, Reply, anthropic_message  # noqa: E402
from .helpers import assert_error, message_body, start_balancer  # noqa: E402

KEY, KEY_SHA = new_key()


def _answer(_r: Received) -> Reply:
    return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message("hello world!")).encode()])


def _config(tmp: Any, name: str, url: str, up: FakeUpstream, **tokens: Any) -> dict[str, Any]:
    return {
        "server": {
            "client_keys": [{"name": "team", "sha256": KEY_SHA, "budget_usd": {"day": 1}, **tokens}],
            "budget_sync_s": 0.2,
        },
        "ledger": {"url": url, "spill_path": str(tmp / f"spill-{name}.sqlite3")},
        "providers": [{"name": "p", "kind": "anthropic", "base_url": up.url, "api_key": "k"}],
        "prices": [{"model": "*", "input": 100_000, "output": 100_000}],
    }


async def _ask(b: Any) -> Any:
    return await b.client.post(
        "/v1/messages", json=message_body(), headers={"x-api-key": KEY, "x-balancer-no-dedup": "1"}
    )


async def test_was_bug_pg_a_lying_upstream_turns_off_budgets_on_every_other_instance(
    nursery: trio.Nursery, tmp_path: Any, store: Any, pg_url: str
) -> None:
    """End to end: an upstream reporting 2e9 input and 2e9 output tokens (each within int4 and
    under MAX_TOKENS_REPORTED) for one request. The record is stored; from then on
    spend_by_client fails on every instance ('integer out of range'), so a second instance never
    learns of the key's spend on the first one and admits it over budget (any key's, since the
    query is for all clients at once; until the month ends)."""
    liar_usage = {"input_tokens": 2_000_000_000, "output_tokens": 2_000_000_000}

    def answer(r: Received) -> Reply:
        msg = anthropic_message("hello world!")
        if r.header("x-liar"):
            msg["usage"] = liar_usage
        return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(msg).encode()])

    up = await FakeUpstream(answer).start(nursery)
    a = await start_balancer(nursery, parse_config(_config(tmp_path, "a", pg_url, up)))
    b = await start_balancer(nursery, parse_config(_config(tmp_path, "b", pg_url, up)))
    try:
        r = await a.client.post(
            "/v1/messages", json=message_body(),
            headers={"x-api-key": KEY, "x-balancer-no-dedup": "1", "x-liar": "1"},
        )  # fmt: skip
        assert r.status_code == 200  # 'team' is now far over on a (its own book)
        assert a.app.ledger is not None
        with trio.fail_after(10):
            await a.app.ledger.wait_written(1)
        assert store.count() == 1  # stored
        written = time.time()
        with trio.fail_after(10):  # b's next sync after the record landed (or its failure)
            while b.app.state.budgets.sync_error is None and (b.app.state.budgets.synced_at or 0) < written:  # noqa: ASYNC110 - state of another server; bounded
                await trio.sleep(0.1)
        r = await _ask(b)
        assert r.status_code == 429, (r.status_code, b.app.state.budgets.sync_error)
    finally:
        await a.client.aclose()
        await b.client.aclose()


async def test_pg_down_at_start_the_balancer_starts_and_enforces_nothing_from_history(
    nursery: trio.Nursery, tmp_path: Any, store: Any, pg_url: str
) -> None:
    """Observation (fail-open): with the database away when an instance starts, its first sync
    fails and the key's earlier spend is not enforced until the database answers again."""
    up = await FakeUpstream(_answer).start(nursery)
    a = await start_balancer(nursery, parse_config(_config(tmp_path, "a", pg_url, up)))
    assert (await _ask(a)).status_code == 200  # $1.30 of $1
    assert a.app.ledger is not None
    with trio.fail_after(10):
        await a.app.ledger.wait_written(1)
    await a.client.aclose()
    # a second instance starting against a database that refuses connections
    dead = "postgresql://postgres@127.0.0.1:1/postgres"
    with trio.fail_after(20):  # no wedge
        b = await start_balancer(nursery, parse_config(_config(tmp_path, "b", dead, up)))
    try:
        assert b.app.state.budgets.sync_error is not None
        r = await _ask(b)
        assert r.status_code == 200  # fail-open: admitted (a's $1.30 unknown here)
    finally:
        await b.client.aclose()


async def test_pg_spend_spilled_while_the_database_was_away_is_counted_once_everywhere(
    nursery: trio.Nursery, tmp_path: Any, store: Any, pg_url: str, pg_srv: PgServer
) -> None:
    up = await FakeUpstream(_answer).start(nursery)
    a = await start_balancer(nursery, parse_config(_config(tmp_path, "a", pg_url, up)))
    b = await start_balancer(nursery, parse_config(_config(tmp_path, "b", pg_url, up)))
    try:
        pg_srv.stop()
        assert (await _ask(a)).status_code == 200  # $1.30, into a's spill file
        assert a.app.ledger is not None
        with trio.fail_after(15):
            while not a.app.ledger.spilled:  # noqa: ASYNC110 - state of another server; bounded
                await trio.sleep(0.05)
        assert_error(await _ask(a), 429, "rate_limit_error")  # a's own book knows
        assert (await _ask(b)).status_code == 200  # b cannot know yet ($1.30 more, spilled too)
        pg_srv.start()
        with trio.fail_after(20):
            while a.app.ledger.spilled or (b.app.ledger is not None and b.app.ledger.spilled):  # noqa: ASYNC110 - state of another server; bounded
                await trio.sleep(0.1)
        drained = time.time()
        with trio.fail_after(10):
            while min(x.app.state.budgets.synced_at or 0 for x in (a, b)) < drained + 0.1:  # noqa: ASYNC110 - state of another server; bounded
                await trio.sleep(0.05)
        for x in (a, b):
            assert x.app.state.budgets.book.spent("team", time.time())["day"].usd == pytest.approx(2.6)
            assert_error(await _ask(x), 429, "rate_limit_error")
    finally:
        await a.client.aclose()
        await b.client.aclose()
