"""``POST /v1/messages/count_tokens``: an optional endpoint that must never cost a provider.

Claude Code calls it in bursts (40-50 a second) and copes without it (it estimates), while
many third-party servers lack it: one gateway suspended a model for 12 h over one 404. So its
failures never touch a provider's health; a provider without it (a 404 or 405, or
``capabilities.count_tokens = false``) gets the balancer's own estimate said as such
(``x-balancer-estimated: 1``); identical counts within 30 s come from a small cache.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
import trio

from trio_balancer.config import parse_config
from trio_balancer.policy.health import FailureKind, State
from trio_balancer.protocol.dedup import ResponseCache
from trio_balancer.protocol.tokens import estimate_request

from .fakes import JSON_HEADERS, FakeUpstream, Pause, Received, Reply, anthropic_message, error_reply
from .helpers import NO_DEDUP, PROVIDER_KEY, Balancer, BalancerFactory, provider_config, wait_for_listeners

MESSAGES: list[Any] = [{"role": "user", "content": "hello world " * 50}]
COUNT = {"model": "claude-opus-4-6", "messages": MESSAGES}
OK = Reply(headers=JSON_HEADERS, steps=[json.dumps(anthropic_message("ok")).encode()])


def counted(n: int) -> Reply:
    return Reply(headers=JSON_HEADERS, steps=[json.dumps({"input_tokens": n}).encode()])


def by_path(count: Reply) -> Any:
    """A provider that answers ``count`` to count_tokens and a message to /v1/messages."""

    def script(r: Received) -> Reply:
        return count if "/count_tokens" in r.target else OK

    return script


def sdk(b: Balancer, key: str = "x") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=b.url, api_key=key, max_retries=0)


async def count(b: Balancer, *, key: str = "x", **headers: str) -> tuple[int, dict[str, str]]:
    """Through the SDK: the count, and the response's headers."""
    async with sdk(b, key) as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model="claude-opus-4-6",
            messages=MESSAGES,
            extra_headers=headers,
        )
    return (await raw.parse()).input_tokens, dict(raw.headers)


def two_providers(a: FakeUpstream, b: FakeUpstream) -> dict[str, Any]:
    return provider_config(a, b)


class TestHealth:
    @pytest.mark.parametrize("status", [500, 503, 429])
    async def test_a_failing_count_leaves_the_provider_healthy_and_first(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, status: int
    ) -> None:
        p0 = await FakeUpstream(by_path(error_reply(status, "api_error"))).start(nursery)
        p1 = await FakeUpstream(by_path(counted(7))).start(nursery)
        b = await balancer_for(config=two_providers(p0, p1))
        n, _ = await count(b, **NO_DEDUP)
        assert n == 7  # the next provider counted it
        assert b.app.registry is not None
        health = b.app.registry.runtimes["p0"].health
        assert health.state is State.HEALTHY and health.consecutive_failures == 0
        async with sdk(b) as client:
            await client.messages.create(model="claude-opus-4-6", max_tokens=8, messages=MESSAGES)
        assert [r.target for r in p0.received] == ["/v1/messages/count_tokens", "/v1/messages"]

    async def test_a_count_the_client_leaves_keeps_a_half_open_trial(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        """A count is no verdict, not even by leaving: the half-open trial out for a message
        stays out (found by the structure review)."""
        hold = Pause()
        upstream.script(Reply(headers=JSON_HEADERS, steps=[hold, b'{"input_tokens": 1}']))
        b = await balancer_for(upstream)
        assert b.app.registry is not None
        health = b.app.registry.runtimes["p0"].health
        health.failed(trio.current_time(), FailureKind.SERVER, "x", retry_after=0.001)
        health.begin(trio.current_time() + 1)  # a message's trial is out
        assert health.trial_in_flight
        with trio.move_on_after(10) as scope:
            async with trio.open_nursery() as n:
                n.start_soon(count, b)
                await hold.wait_reached()
                n.cancel_scope.cancel()  # the client leaves mid-count
        assert not scope.cancelled_caught
        await b.wait_idle()
        assert health.trial_in_flight

    @pytest.mark.parametrize("status", [404, 405])
    async def test_a_provider_without_the_endpoint_gets_the_local_estimate(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, status: int
    ) -> None:
        p0 = await FakeUpstream(by_path(error_reply(status, "not_found_error"))).start(nursery)
        p1 = await FakeUpstream(by_path(counted(7))).start(nursery)
        b = await balancer_for(config=two_providers(p0, p1))
        n, headers = await count(b, **NO_DEDUP)
        assert n == estimate_request(COUNT) and headers["x-balancer-estimated"] == "1"
        assert p1.received == []  # answered at once: no more upstream calls for a count
        assert b.app.registry is not None
        assert b.app.registry.runtimes["p0"].health.state is State.HEALTHY

    async def test_a_real_count_is_not_said_to_be_estimated(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        up = await FakeUpstream(by_path(counted(42))).start(nursery)
        n, headers = await count(await balancer_for(up), **NO_DEDUP)
        assert n == 42 and "x-balancer-estimated" not in headers


class TestLocal:
    @pytest.mark.parametrize(
        "row",
        [
            {"capabilities": {"count_tokens": False}},
            {"preset": "anthropic-compatible"},
            {"kind": "openai"},
        ],
    )
    async def test_a_provider_without_count_tokens_is_never_asked(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, row: dict[str, Any]
    ) -> None:
        up = await FakeUpstream(by_path(counted(42))).start(nursery)
        config = provider_config(up)
        config["providers"][0].update(row)
        b = await balancer_for(config=config)
        n, headers = await count(b, **NO_DEDUP)
        assert n == estimate_request(COUNT) and headers["x-balancer-estimated"] == "1"
        assert up.received == []

    async def test_a_count_needing_a_server_tool_is_still_counted(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        """Counting a request is not running it: a web search no provider runs is no 400."""
        b = await balancer_for(upstream, preset="anthropic-compatible")
        tools = [{"type": "web_search_20250305", "name": "web_search"}]
        r = await b.client.post("/v1/messages/count_tokens", json={**COUNT, "tools": tools}, headers=NO_DEDUP)
        assert r.status_code == 200 and r.headers["x-balancer-estimated"] == "1", r.text
        assert upstream.received == []


class TestCache:
    async def test_identical_counts_within_the_window_make_one_call(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        up = await FakeUpstream(by_path(counted(42))).start(nursery)
        b = await balancer_for(up)
        results = [await count(b) for _ in range(3)]
        assert [n for n, _ in results] == [42, 42, 42] and len(up.received) == 1
        assert results[1][1]["x-balancer-dedup"] == "cache"

    async def test_another_client_or_another_request_is_counted_again(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        up = await FakeUpstream(by_path(counted(42))).start(nursery)
        b = await balancer_for(up)
        await count(b, key="sk-a")
        await count(b, key="sk-b")  # never an answer given to another key
        async with sdk(b) as client:
            await client.messages.count_tokens(
                model="claude-opus-4-6", messages=[{"role": "user", "content": "x"}]
            )
        assert len(up.received) == 3

    async def test_a_burst_shares_one_upstream_call(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        hold = Pause()
        up = await FakeUpstream(Reply(headers=JSON_HEADERS, steps=[hold, b'{"input_tokens": 42}'])).start(
            nursery
        )
        b = await balancer_for(up)
        got: list[int] = []

        async def one() -> None:
            got.append((await count(b))[0])

        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(one)
            await hold.wait_reached()
            await wait_for_listeners(b.app, 5)
            hold.release()
        assert got == [42] * 5 and len(up.received) == 1

    async def test_a_failed_count_is_not_cached(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        up = await FakeUpstream([error_reply(400, "invalid_request_error"), counted(42)]).start(nursery)
        b = await balancer_for(up)
        with pytest.raises(anthropic.BadRequestError):
            await count(b)
        assert (await count(b))[0] == 42 and len(up.received) == 2


class TestCountCacheUnit:
    def test_bounded_in_entries_and_in_time(self) -> None:
        cache = ResponseCache(ttl_s=30.0, max_bytes=1 << 20, max_items=2)
        for i, key in enumerate("abc"):
            cache.put(key, float(i), status=200, headers=[], chunks=[b"{}"], sse=False)
        assert len(cache) == 2 and cache.get("a", 2.0) is None  # the oldest made room
        assert cache.get("c", 31.9) is not None and cache.get("c", 32.0) is None


def test_the_preset_without_the_endpoint() -> None:
    """Anthropic-compatible third parties mostly lack it (DeepSeek's, Kimi's /anthropic)."""
    row = {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:1", "api_key": PROVIDER_KEY}
    caps = parse_config({"providers": [{**row, "preset": "anthropic-compatible"}]}).providers[0].capabilities
    assert not caps.count_tokens
    assert parse_config({"providers": [row]}).providers[0].capabilities.count_tokens


async def test_a_200_that_is_not_a_count_gets_the_estimate(
    upstream: FakeUpstream, balancer_for: BalancerFactory
) -> None:
    """A provider (or a proxy before it) answering a count with a page is not relayed: the
    client gets the estimate, said as such (found by an attack)."""
    upstream.script(Reply(headers=JSON_HEADERS, steps=[b"<html>oops</html>"]))
    b = await balancer_for(upstream)
    r = await b.client.post("/v1/messages/count_tokens", json=COUNT, headers=NO_DEDUP)
    assert r.status_code == 200 and r.json() == {"input_tokens": estimate_request(COUNT)}
    assert r.headers["x-balancer-estimated"] == "1"


async def test_a_failed_count_does_not_move_the_sticky_session(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """A count is no turn of the conversation: where it went leaves the session where it was."""
    p0 = await FakeUpstream(by_path(error_reply(500, "api_error"))).start(nursery)
    p1 = await FakeUpstream(by_path(counted(5))).start(nursery)
    b = await balancer_for(config={**two_providers(p0, p1), "routing": {"sticky": True}})
    session = {"x-claude-code-session-id": "conv-1", **NO_DEDUP}
    async with sdk(b) as client:
        await client.messages.create(
            model="claude-opus-4-6", max_tokens=8, messages=MESSAGES, extra_headers=session
        )
        n = await client.messages.count_tokens(
            model="claude-opus-4-6", messages=MESSAGES, extra_headers=session
        )
        assert n.input_tokens == 5
        await client.messages.create(
            model="claude-opus-4-6", max_tokens=8, messages=MESSAGES, extra_headers=session
        )
    assert [r.target for r in p0.received].count("/v1/messages") == 2, "the session moved to p1"
