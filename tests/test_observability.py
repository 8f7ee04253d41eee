"""Logs, metrics and the status page: what an operator sees."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_balancer import logging as blog

from .fakes import FakeUpstream, Reply, anthropic_text_events, error_reply, interleave
from .helpers import (
    BODY,
    CLIENT_KEY,
    NO_DEDUP,
    PROVIDER_KEY,
    SECRETS,
    Balancer,
    BalancerFactory,
    one_at_a_time,
    release_as_seen,
)


async def metrics(b: Balancer) -> dict[str, float]:
    r = await b.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            key = sample.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"
            out[key] = sample.value
    return out


async def read_one_at_a_time(b: Balancer, events: list[bytes], upstream: FakeUpstream) -> None:
    """Stream ``events`` through ``b``, the provider sending each after the commit point only
    once the client has the one before: each crosses the balancer alone, as its own chunk."""
    steps, pauses = one_at_a_time(events, at_once=4)
    upstream.script(Reply(steps=steps))
    wire = b""
    with trio.fail_after(10):
        async with b.client.stream("POST", "/v1/messages", json=BODY) as r:
            async for chunk in r.aiter_raw():
                wire += chunk
                release_as_seen(wire, pauses, at_once=4)
    assert wire == b"".join(events)


class TestLogs:
    async def test_every_line_of_a_request_carries_its_id(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, captured: list[dict[str, Any]]
    ) -> None:
        bad = await FakeUpstream(error_reply(500, "api_error")).start(nursery)
        good = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
        b = await balancer_for(bad, good)
        async with b.client.stream("POST", "/v1/messages", json=BODY, headers={"x-api-key": CLIENT_KEY}) as r:
            await r.aread()
        await b.wait_idle()
        rid = r.headers["x-balancer-request-id"]
        mine = [e for e in captured if e.get("request_id") == rid]
        names = [e["event"] for e in mine]
        for expected in (
            "request.start",
            "upstream.connect",
            "provider.cooldown",
            "failover",
            "stream.commit",
            "request.end",
        ):
            assert expected in names, (expected, names)
        request_scoped = {
            "request.start",
            "upstream.connect",
            "failover",
            "stream.commit",
            "request.end",
            "provider.cooldown",
        }
        assert all(e.get("request_id") == rid for e in captured if e["event"] in request_scoped)
        end = next(e for e in mine if e["event"] == "request.end")
        for field in (
            "status",
            "provider",
            "duration_ms",
            "events",
            "bytes",
            "input_tokens",
            "output_tokens",
        ):
            assert field in end
        assert end["status"] == 200 and end["provider"] == "p1"

    async def test_debug_trace_has_each_events_timing(
        self, upstream: FakeUpstream, balancer: Balancer, captured: list[dict[str, Any]]
    ) -> None:
        await read_one_at_a_time(balancer, anthropic_text_events(["a", "b", "c"]), upstream)
        await balancer.wait_idle()
        chunks = [e for e in captured if e["event"] == "stream.chunk"]
        assert len(chunks) >= 5
        assert all(e["handed"] >= e["received"] and e["forward_us"] >= 0 for e in chunks)

    def test_redaction_of_keys_in_values_and_keys(self) -> None:
        event = {
            "event": "x",
            "headers": {"x-api-key": PROVIDER_KEY, "authorization": f"Bearer {CLIENT_KEY}", "accept": "*/*"},
            "error": f"upstream said: invalid key {PROVIDER_KEY}",
            "api_key": "anything",
            "note": "Authorization: Bearer abcdef123456",
        }
        out = json.dumps(blog.redact(None, "info", event))
        assert PROVIDER_KEY not in out and CLIENT_KEY not in out and "abcdef123456" not in out
        assert blog.REDACTED in out and '"accept": "*/*"' in out

    def test_token_counts_are_not_secrets(self) -> None:
        counts = {
            "event": "request.end",
            "input_tokens": 12,
            "output_tokens": 34,
            "max_tokens": 100,
            "cache_read_input_tokens": 5,
        }
        assert blog.redact(None, "info", dict(counts)) == counts
        assert (
            blog.redact(None, "info", {"event": "x", "access_token": "abc", "client_secret": "s"})[
                "access_token"
            ]
            == blog.REDACTED
        )

    def test_real_log_output_is_redacted(self, session_log: list[str]) -> None:
        """Through the configured pipeline (not a capture): the line is written, the key is not.
        The conftest also scans the whole session's log output for every test key at the end."""
        start = len(session_log)
        blog.get_logger("probe").warning(
            "probe.secret", detail=f"x-api-key: {PROVIDER_KEY}", authorization=CLIENT_KEY
        )
        written = "".join(session_log[start:])
        assert "probe.secret" in written and blog.REDACTED in written
        assert [s for s in SECRETS if s in written] == []
        assert [s for s in SECRETS if s in "".join(session_log)] == []


class TestMetrics:
    async def test_metrics_parse_and_move(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(Reply(steps=interleave(anthropic_text_events(["a", "b"], input_tokens=50), 0.01)))
        before = await metrics(balancer)
        for _ in range(2):
            async with balancer.client.stream("POST", "/v1/messages", json=BODY, headers=NO_DEDUP) as r:
                await r.aread()
        await balancer.wait_idle()
        after = await metrics(balancer)
        key = "trio_balancer_requests_total{model=claude-opus-4-6,provider=p0,status=200}"
        assert after[key] - before.get(key, 0) == 2
        assert after["trio_balancer_tokens_total{model=claude-opus-4-6,provider=p0,type=input}"] == 100
        assert after["trio_balancer_upstream_ttfb_seconds_count{provider=p0}"] == 2
        assert after["trio_balancer_stream_events_total{provider=p0}"] == 2 * 8  # 2 deltas + 6 framing events
        assert after["trio_balancer_cost_usd_total{model=claude-opus-4-6,provider=p0}"] > 0
        assert after["trio_balancer_provider_state{provider=p0,state=healthy}"] == 1
        assert after["trio_balancer_dedup_total{role=off}"] == 2
        assert after["trio_balancer_active_flights{}"] == 0

    async def test_forward_latency_histogram_is_populated(
        self, upstream: FakeUpstream, balancer: Balancer, captured: list[dict[str, Any]]
    ) -> None:
        await read_one_at_a_time(balancer, anthropic_text_events([f"t{i}" for i in range(10)]), upstream)
        await balancer.wait_idle()
        m = await metrics(balancer)
        count = m["trio_balancer_forward_latency_seconds_count{}"]
        assert count >= 10  # the held head goes out with the first delta, then one per event
        # Each observation is the time the debug trace measured for that event, in seconds
        # (how long forwarding took depends on the machine's load; that the histogram holds
        # those times, in the right buckets, does not).
        traced = [e["forward_us"] / 1e6 for e in captured if e["event"] == "stream.chunk"]
        assert len(traced) == count
        assert 0 < m["trio_balancer_forward_latency_seconds_sum{}"] == pytest.approx(sum(traced), abs=1e-6)
        for le in (0.001, 0.01, 0.1):  # the trace rounds to 0.1 us: a value on a bound may go either way
            in_bucket = m[f"trio_balancer_forward_latency_seconds_bucket{{le={le}}}"]
            assert sum(t < le - 1e-7 for t in traced) <= in_bucket <= sum(t <= le + 1e-7 for t in traced)

    async def test_models_normalised_into_bounded_labels(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["x"])))
        for model in ["some-random-model-1", "some-random-model-2", "claude-haiku-4-5-20251001"]:
            await balancer.client.post("/v1/messages", json={**BODY, "model": model}, headers=NO_DEDUP)
        await balancer.wait_idle()
        text = (await balancer.client.get("/metrics")).text
        assert "some-random-model" not in text
        assert 'model="other"' in text and 'model="claude-haiku-4-5"' in text

    async def test_failovers_by_reason(self, nursery: trio.Nursery, balancer_for: BalancerFactory) -> None:
        a = await FakeUpstream(
            Reply(status=429, headers=[("content-type", "application/json")], steps=[b"{}"])
        ).start(nursery)
        c = await FakeUpstream(Reply(steps=anthropic_text_events(["x"]))).start(nursery)
        b = await balancer_for(a, c)
        await b.client.post("/v1/messages", json=BODY)
        await b.wait_idle()
        assert (await metrics(b))["trio_balancer_failovers_total{provider=p0,reason=rate_limited}"] == 1


class TestStatus:
    async def test_status_page_with_providers_in_each_state(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        ups = [await FakeUpstream(Reply(steps=anthropic_text_events(["x"]))).start(nursery) for _ in range(3)]
        b = await balancer_for(*ups)
        await b.client.post("/v1/messages", json=BODY)
        assert b.app.registry is not None
        now = trio.current_time()
        from trio_balancer.policy.health import FailureKind

        b.app.registry.runtimes["p1"].health.failed(
            now, FailureKind.OVERLOADED, "HTTP 529 overloaded_error", retry_after=60
        )
        b.app.registry.runtimes["p2"].health.failed(
            now - 10, FailureKind.SERVER, "HTTP 500 api_error", retry_after=1
        )
        await b.wait_idle()
        data = (await b.client.get("/status.json")).json()
        states = {p["name"]: p["state"] for p in data["providers"]}
        assert states == {"p0": "healthy", "p1": "cooling", "p2": "half_open"}
        assert data["last_hour"]["requests"] == 1 and data["minutes"][-1]["requests"] == 1
        page = await b.client.get("/status")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        for needle in (
            "healthy",
            "cooling",
            "half_open",
            "HTTP 529 overloaded_error",
            "<svg",
            'http-equiv="refresh"',
            "polyline",
        ):
            assert needle in html
        assert "<script" not in html and "http://" not in html.replace(b.url, "")
