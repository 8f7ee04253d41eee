"""Attack probes on budgets through the running balancer.

Tests named ``test_BUG_*`` demonstrate a real bug (they fail against the current source);
the others are probes that held up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_balancer.config import ConfigError, load_config, parse_config
from trio_balancer.policy.auth import new_key

from .fakes import (
    JSON_HEADERS,
    FakeUpstream,
    Pause,
    Received,
    Reply,
    anthropic_message,
    anthropic_text_events,
    error_reply,
    openai_text_stream,
)
from .helpers import PROVIDER_KEY, Balancer, BalancerFactory, assert_error, message_body, start_balancer

ALICE, ALICE_SHA = new_key()
BOB, BOB_SHA = new_key()
PRICES = [{"model": "*", "input": 100_000, "output": 100_000}]  # $0.10 a token
TEXT = "hello world!"


def answer(r: Received) -> Reply:
    if json.loads(r.body).get("stream"):
        return Reply(steps=anthropic_text_events([TEXT]))
    return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message(TEXT)).encode()])


def config_for(*ups: FakeUpstream, keys: list[dict[str, Any]] | None = None, prices: Any = PRICES,
               kinds: tuple[str, ...] = (), **server: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "server": {
            "client_keys": keys
            or [{"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 3}, "tokens": {"day": 10_000}}],
            **server,
        },
        "providers": [
            {
                "name": f"p{i}",
                "kind": (kinds[i] if i < len(kinds) else "anthropic"),
                "base_url": u.url,
                "api_key": PROVIDER_KEY,
            }
            for i, u in enumerate(ups)
        ],
        "prices": prices,
    }


async def ask(
    b: Balancer, who: str = ALICE, *, stream: bool = False, dedup: bool = False, **body: Any
) -> Any:
    headers = {"x-api-key": who}
    if not dedup:
        headers["x-balancer-no-dedup"] = "1"
    return await b.client.post("/v1/messages", json=message_body(stream=stream, **body), headers=headers)


def spent(b: Balancer, client: str = "alice") -> Any:
    import time

    return b.app.state.budgets.book.spent(client, time.time())["day"]


async def test_a_client_that_leaves_mid_stream_pays_what_was_produced(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    pause = Pause()
    events = anthropic_text_events(["a" * 400, "b" * 400])
    up = await FakeUpstream(Reply(steps=[*events[:4], pause, *events[4:]])).start(nursery)
    b = await balancer_for(config=config_for(up))
    async with b.client.stream(
        "POST", "/v1/messages", json=message_body(stream=True),
        headers={"x-api-key": ALICE, "x-balancer-no-dedup": "1"},
    ) as r:  # fmt: skip
        assert r.status_code == 200
        await pause.wait_reached()
        async for _chunk in r.aiter_raw():
            break
    (row,) = await b.ledger_rows(1)
    assert row["client"] == "alice" and row["outcome"] == "client_left", row
    assert row["usage_source"] in ("partial", "estimated") and row["cost_usd"] > 0, row
    s = spent(b)
    assert s.usd == pytest.approx(row["cost_usd"]) and s.tokens > 12


async def test_an_openai_provider_without_usage_counts_its_estimate(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    up = await FakeUpstream(Reply(steps=openai_text_stream(["some words " * 50], usage=None))).start(nursery)
    b = await balancer_for(config=config_for(up, kinds=("openai",)))
    r = await ask(b, stream=True)
    assert r.status_code == 200, r.text
    (row,) = await b.ledger_rows(1)
    assert row["usage_source"] in ("estimated", "partial") and row["flagged"], row
    assert spent(b).usd == pytest.approx(row["cost_usd"]) and row["cost_usd"] > 0


async def test_failover_counts_the_provider_that_answered_once(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    bad = await FakeUpstream(error_reply(529, "overloaded_error")).start(nursery)
    good = await FakeUpstream(answer).start(nursery)
    b = await balancer_for(config=config_for(bad, good))
    r = await ask(b, stream=True)
    assert r.status_code == 200, r.text
    (row,) = await b.ledger_rows(1)
    assert row["provider"] == "p1" and row["cost_usd"] == pytest.approx(1.5)
    assert spent(b).usd == pytest.approx(1.5)


async def test_count_tokens_is_neither_refused_nor_charged(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    def by_path(r: Received) -> Reply:
        if r.target.endswith("count_tokens"):
            return Reply(headers=list(JSON_HEADERS), steps=[b'{"input_tokens": 5000}'])
        return answer(r)

    up = await FakeUpstream(by_path).start(nursery)
    keys = [{"name": "alice", "sha256": ALICE_SHA, "tokens": {"day": 6000}}]
    b = await balancer_for(config=config_for(up, keys=keys))
    for _ in range(3):
        r = await b.client.post(
            "/v1/messages/count_tokens",
            json=message_body(),
            headers={"x-api-key": ALICE, "x-balancer-no-dedup": "1"},
        )
        assert r.status_code == 200, r.text
    await b.ledger_rows(3)
    assert spent(b).tokens == 0 and spent(b).usd == 0
    assert (await ask(b)).status_code == 200


async def test_concurrent_requests_overshoot_only_by_what_was_admitted(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """20 requests at once with $3 left: all admitted (documented bound); then refused."""
    pause = Pause()
    events = anthropic_text_events([TEXT])
    up = await FakeUpstream(lambda _r: Reply(steps=[*events[:2], pause, *events[2:]])).start(nursery)
    b = await balancer_for(config=config_for(up))
    results: list[int] = []

    async def one() -> None:
        results.append((await ask(b, stream=True)).status_code)

    async with trio.open_nursery() as n:
        for _ in range(20):
            n.start_soon(one)
        with trio.fail_after(5):
            while len(up.received) < 20:  # noqa: ASYNC110 - another task fills it; bounded
                await trio.sleep(0.01)
        pause.release()
    assert results == [200] * 20
    await b.ledger_rows(20)
    assert spent(b).usd == pytest.approx(30.0)
    r = await ask(b)
    body = assert_error(r, 429, "rate_limit_error")
    assert "$30.0000 spent" in body["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1


async def test_a_follower_of_an_exhausted_key_is_refused_and_a_cache_hit_is_free(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    up = await FakeUpstream(answer).start(nursery)
    keys = [
        {"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 1}},
        {"name": "bob", "sha256": BOB_SHA, "budget_usd": {"day": 100}},
    ]
    b = await balancer_for(config=config_for(up, keys=keys))
    assert (await ask(b, ALICE, dedup=True)).status_code == 200  # $1.30: alice is over
    await b.ledger_rows(1)
    assert_error(await ask(b, ALICE, dedup=True), 429, "rate_limit_error")  # even a cache hit
    r = await ask(b, BOB, dedup=True)  # the same request: not shared across keys, bob pays
    assert r.status_code == 200 and r.headers.get("x-balancer-dedup") == "leader"
    await b.ledger_rows(3)
    assert spent(b, "bob").usd == pytest.approx(1.3)


async def test_a_lying_upstream_with_odd_usage_types(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Usage fields of odd types are ignored (estimated instead); negative ones too; a huge int is
    capped at 10**12 (which then exhausts any budget: observation)."""
    shapes: list[Any] = [
        {"input_tokens": -5, "output_tokens": -5},
        {"input_tokens": "12", "output_tokens": 1e30},
        {"input_tokens": True, "output_tokens": None},
        {"input_tokens": float("nan"), "output_tokens": [1]},
    ]
    turn = iter(shapes)

    def liar(_r: Received) -> Reply:
        usage = next(turn)
        msg = {**anthropic_message(TEXT), "usage": usage}
        return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(msg).encode()])

    up = await FakeUpstream(liar).start(nursery)
    keys = [{"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 1000}}]
    b = await balancer_for(config=config_for(up, keys=keys))
    for _ in shapes:
        assert (await ask(b)).status_code == 200
    rows = await b.ledger_rows(len(shapes))
    total = sum(r["cost_usd"] for r in rows)
    assert all(r["cost_usd"] >= 0 for r in rows) and math.isfinite(total)
    assert spent(b).usd == pytest.approx(total)
    assert all(r["input_tokens"] >= 0 and r["output_tokens"] >= 0 for r in rows)


async def test_a_nan_price_is_refused_at_load(nursery: trio.Nursery) -> None:
    """[[prices]] took ``nan`` (TOML has it): every cost was NaN, and ``spent >= limit`` is
    False for NaN forever, so the key was never refused again (found by attack)."""
    up = await FakeUpstream(answer).start(nursery)
    prices = [{"model": "*", "input": math.nan, "output": 100_000}]
    with pytest.raises(ConfigError, match="must be a finite number"):
        parse_config(config_for(up, prices=prices))


async def test_usage_endpoint_budgets_and_no_secret_in_the_message(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    up = await FakeUpstream(answer).start(nursery)
    keys = [{"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 1}}]
    b = await balancer_for(config=config_for(up, keys=keys, budget_timezone="Asia/Kathmandu"))
    assert (await ask(b)).status_code == 200
    await b.ledger_rows(1)
    r = await ask(b)
    body = assert_error(r, 429, "rate_limit_error")
    msg = body["error"]["message"]
    assert ALICE not in msg and ALICE_SHA not in msg and PROVIDER_KEY not in msg
    assert "+05:45" in msg, msg  # the reset in the configured zone
    usage = (await b.client.get("/usage")).json()
    (alice,) = usage["budgets"]
    (line,) = alice["budgets"]
    assert line["exhausted"] and line["left"] == 0 and line["spent"] == pytest.approx(1.3)


async def test_a_reload_that_renames_a_key_starts_its_spend_afresh(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Observation: spend is by name, so renaming a key (same secret) on reload resets its budget."""
    up = await FakeUpstream(answer).start(nursery)
    path = tmp_path / "b.toml"

    def write(name: str, tz: str = "UTC") -> None:
        path.write_text(
            f"[server]\nbudget_timezone = '{tz}'\n[[server.client_keys]]\nname = '{name}'\nsha256 = '{ALICE_SHA}'\n"
            "budget_usd = { day = 1 }\n"
            f"[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = '{up.url}'\napi_key = '{PROVIDER_KEY}'\n"
            "[[prices]]\nmodel = '*'\ninput = 100000\noutput = 100000\n"
        )

    write("alice")
    b = await start_balancer(nursery, load_config(path))
    async with b.client:
        assert (await ask(b)).status_code == 200
        await b.ledger_rows(1)
        assert_error(await ask(b), 429, "rate_limit_error")
        write("alice2")
        await b.app.reload()
        assert (await ask(b)).status_code == 200  # a fresh budget under the new name


async def test_was_bug_a_time_zone_reload_right_after_a_request_forgets_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A reload that changes budget_timezone drops the whole book and resyncs from the ledger at
    once (instance id += "+"); a request recorded a moment before is still in the ledger writer's
    batch window (BATCH_WINDOW_S = 0.1 s; or in the spill file while the database is away), so it
    is in neither the new book's own part nor the ledger: the key is admitted over budget until
    the record lands and the next budget_sync_s passes (or, with the database away, until it is back)."""
    up = await FakeUpstream(answer).start(nursery)
    path = tmp_path / "b.toml"

    def write(tz: str) -> None:
        path.write_text(
            f"[server]\nbudget_timezone = '{tz}'\nbudget_sync_s = 3600\n"
            f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{ALICE_SHA}'\n"
            "budget_usd = { month = 1 }\n"
            f"[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = '{up.url}'\napi_key = '{PROVIDER_KEY}'\n"
            "[[prices]]\nmodel = '*'\ninput = 100000\noutput = 100000\n"
        )

    write("UTC")
    b = await start_balancer(nursery, load_config(path))
    async with b.client:
        assert b.app.ledger is not None
        assert (await ask(b)).status_code == 200  # $1.30 of $1
        assert_error(await ask(b), 429, "rate_limit_error")
        write("Etc/GMT-1")  # same month as UTC except on the last hour of a month
        await b.app.reload()  # no waiting: the record may still be in the writer's batch window
        await b.app.state.budgets.sync(b.app.ledger.reader)
        assert_error(await ask(b), 429, "rate_limit_error")  # (failed before the fix)


async def test_was_bug_orphaned_flights_escape_max_concurrent_and_the_overshoot_bound(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """policy/budgets.py bounds the overshoot by 'what the requests admitted before the one that
    crossed the line spend (its concurrency, if it has max_concurrent)'. With [dedup]
    finish_orphans, a client that opens a stream and leaves frees its concurrency slot at once
    (the handler ends) while its flight runs on into the cache, and the flight's cost is counted
    only when it ends. A key with max_concurrent = 1 and a $3 day thus runs 8 flights at once and
    spends 8x what one may, none of it visible to the admit check while they run."""
    pause = Pause()

    def script(_r: Received) -> Reply:
        events = anthropic_text_events(["x" * 400])
        return Reply(steps=[*events[:4], pause, *events[4:]])

    up = await FakeUpstream(script).start(nursery)
    keys = [{"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 3}, "max_concurrent": 1}]
    config = config_for(up, keys=keys)
    config["dedup"] = {"finish_orphans": True}
    b = await balancer_for(config=config)
    admitted = 0
    for i in range(8):  # bounded
        async with b.client.stream(
            "POST", "/v1/messages", json=message_body(stream=True, content=f"question {i}"),
            headers={"x-api-key": ALICE},
        ) as r:  # fmt: skip
            if r.status_code != 200:
                break
            admitted += 1
            async for _chunk in r.aiter_raw():
                break  # the client leaves: its flight finishes into the cache
        await trio.sleep(0.05)
    in_flight = len(up.received)
    pause.release()
    await b.wait_idle()
    assert admitted <= 2 and in_flight <= 2, (admitted, in_flight)  # (failed before the fix)


async def test_failover_after_a_provider_started_a_stream_counts_only_the_one_that_answered(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Observation: p0 sends message_start (12 input tokens it will bill) and then an overloaded
    error before any content; the flight fails over to p1. The record (and so the budget)
    counts p1's usage only (outcome.py: attempts before the commit point are not counted)."""
    from .fakes import sse

    events = anthropic_text_events([TEXT], input_tokens=100_000)
    broken = Reply(
        steps=[
            events[0],
            sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}),
        ]
    )
    p0 = await FakeUpstream(broken).start(nursery)
    p1 = await FakeUpstream(answer).start(nursery)
    b = await balancer_for(config=config_for(p0, p1))
    r = await ask(b, stream=True)
    assert r.status_code == 200
    (row,) = await b.ledger_rows(1)
    assert len(p0.received) == 1 and row["provider"] == "p1", row
    assert row["input_tokens"] == 12 and spent(b).usd == pytest.approx(1.5)
