"""The operator's webhook: a key's budget passing 80 % and 100 %, a provider cooling down and
recovering; posted by one task with bounded retries, never in a request's way."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
import trio

from trio_balancer.app.alerts import QUEUE, Notifier
from trio_balancer.config import AlertsConfig
from trio_balancer.policy.auth import new_key

from .fakes import (
    HANG,
    JSON_HEADERS,
    FakeUpstream,
    Received,
    Reply,
    anthropic_message,
    anthropic_text_events,
    error_reply,
)
from .helpers import PROVIDER_KEY, BalancerFactory, message_body, wait_until

ALICE, ALICE_SHA = new_key()
SECRET_PATH = "/services/T000/B000/s3cr3t-webhook-token"
OK = Reply(headers=list(JSON_HEADERS), steps=[b"{}"])


def answer(r: Received) -> Reply:
    if json.loads(r.body).get("stream"):
        return Reply(steps=anthropic_text_events(["hello world!"]))  # $1.50
    return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message("hello world!")).encode()])


def config(hook: FakeUpstream, *providers: FakeUpstream, **alerts: Any) -> dict[str, Any]:
    return {
        "server": {"client_keys": [{"name": "alice", "sha256": ALICE_SHA, "budget_usd": {"day": 3}}]},
        "providers": [
            {"name": f"p{i}", "kind": "anthropic", "base_url": u.url, "api_key": PROVIDER_KEY}
            for i, u in enumerate(providers)
        ],
        "prices": [{"model": "*", "input": 100_000, "output": 100_000}],
        "alerts": {"webhook_url": hook.url + SECRET_PATH, "timeout_s": 2, "retries": 2, **alerts},
    }


def posted(hook: FakeUpstream) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in hook.received]


async def ask(b: Any, *, stream: bool) -> int:
    headers = {"x-api-key": ALICE, "x-balancer-no-dedup": "1"}
    r = await b.client.post("/v1/messages", json=message_body(stream=stream), headers=headers)
    return int(r.status_code)


async def test_a_budget_passing_80_and_100_percent_is_told_once_each(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    hook = await FakeUpstream(OK).start(nursery)
    up = await FakeUpstream(answer).start(nursery)
    b = await balancer_for(config=config(hook, up))
    assert await ask(b, stream=True) == 200  # $1.50: half
    await b.wait_idle()
    assert await ask(b, stream=False) == 200  # $2.80: past 80 %
    await wait_until(lambda: len(hook.received) >= 1)
    assert await ask(b, stream=True) == 200  # $4.30: past 100 %
    await wait_until(lambda: len(hook.received) >= 2)
    assert await ask(b, stream=True) == 429  # refused: no more spend, no more alert
    events = posted(hook)
    assert [(e["event"], e["client"], e["budget"], e["threshold"]) for e in events] == [
        ("budget_threshold", "alice", "usd/day", 0.8),
        ("budget_threshold", "alice", "usd/day", 1.0),
    ]
    assert events[1]["spent"] == pytest.approx(4.3) and events[1]["limit"] == 3
    assert hook.received[0].target == SECRET_PATH
    assert b.app.state.notifier is not None and b.app.state.notifier.sent == 2


async def test_a_provider_cooling_down_is_told(nursery: trio.Nursery, balancer_for: BalancerFactory) -> None:
    hook = await FakeUpstream(OK).start(nursery)
    bad = await FakeUpstream(error_reply(529, "overloaded_error", "Overloaded")).start(nursery)
    good = await FakeUpstream(answer).start(nursery)
    b = await balancer_for(config=config(hook, bad, good))
    assert await ask(b, stream=True) == 200
    await wait_until(lambda: len(hook.received) >= 1)
    (event,) = posted(hook)
    assert event["event"] == "provider_unhealthy" and event["provider"] == "p0"
    assert event["cooldown_s"] > 0 and "529" in event["reason"]
    assert event["instance"] == b.app.state.budgets.instance


async def test_a_failing_webhook_is_retried_a_bounded_number_of_times_and_never_logged(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    hook = await FakeUpstream([Reply(status=500, steps=[b"no"]), Reply(status=503, steps=[b"no"]), OK]).start(
        nursery
    )
    up = await FakeUpstream(answer).start(nursery)
    b = await balancer_for(config=config(hook, up))
    notifier = b.app.state.notifier
    assert notifier is not None
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    notifier.sleep = no_wait  # the backoff, without waiting for it
    with structlog.testing.capture_logs() as logs:
        notifier.post({"event": "test"})
        await wait_until(lambda: notifier.sent == 1)
    assert len(hook.received) == 3 and waits == [1.0, 2.0]
    assert [entry["error"] for entry in logs if entry["event"] == "alerts.post_failed"] == [
        "HTTP 500",
        "HTTP 503",
    ]
    assert "s3cr3t" not in repr(logs) and "s3cr3t" not in repr(b.app.config.alerts)
    # Every try failing: given up after 1 + retries, counted.
    hook.script(Reply(status=500, steps=[b"no"]))
    notifier.post({"event": "test"})
    await wait_until(lambda: notifier.failed == 1)
    assert len(hook.received) == 6


async def test_a_webhook_that_hangs_costs_requests_nothing(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    hook = await FakeUpstream(Reply(hang_before_headers=True, steps=[HANG])).start(nursery)
    bad = await FakeUpstream(error_reply(529, "overloaded_error", "Overloaded")).start(nursery)
    good = await FakeUpstream(answer).start(nursery)
    b = await balancer_for(config=config(hook, bad, good, timeout_s=30, retries=0))
    for _ in range(3):  # each cooldown is an event for a webhook that never answers
        assert await ask(b, stream=False) == 200
    assert b.app.state.notifier is not None
    assert b.app.state.notifier.sent == 0


async def test_a_full_queue_drops_new_events_and_counts_them() -> None:
    notifier = Notifier(lambda: AlertsConfig(webhook_url="http://127.0.0.1:9/hook"), lambda: "me")
    for i in range(QUEUE + 5):
        notifier.post({"event": "x", "i": i})  # no task is posting: they queue, then overflow
    assert notifier.dropped == 5 and notifier.view()["queued"] == QUEUE


def test_no_webhook_no_events() -> None:
    notifier = Notifier(lambda: AlertsConfig(), lambda: "me")
    notifier.post({"event": "x"})
    assert notifier.view() == {"webhook": None, "sent": 0, "failed": 0, "dropped": 0, "queued": 0}
