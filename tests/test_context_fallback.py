"""Context-window fallback end to end: the balancer in front of simulators whose models have
windows, driven with the ``anthropic`` SDK. A prompt too long for a target skips it in the
plan, or its upstream's "prompt too long" 400 moves the request on, the provider stays healthy,
and the client sees one clean answer."""

from __future__ import annotations

from functools import cache, partial
from typing import Any

import anthropic
import attrs
import httpx
import pytest
import trio

from trio_balancer.policy.health import State
from trio_balancer.protocol.windows import prompt_too_long
from trio_balancer.tools import simulator

from .helpers import NO_DEDUP, PROVIDER_KEY, Balancer, BalancerFactory


@cache
def long_prompt() -> str:
    """About 200k tokens by the balancer's estimate (600 KB); built once."""
    return "ab. " * 150_000


@attrs.frozen
class Sim:
    """A running simulator and its URL."""

    sim: simulator.Simulator
    url: str

    @property
    def requests(self) -> int:
        return self.sim.requests


async def start_sim(nursery: trio.Nursery, windows: dict[str, int]) -> Sim:
    """A simulator whose models have these windows (the rest: any prompt fits)."""
    sim = simulator.Simulator(simulator.SimOptions(eps=0, events=3), windows=windows)
    port = await nursery.start(partial(simulator.serve, sim))
    return Sim(sim, f"http://127.0.0.1:{port}")


def provider(name: str, sim: Sim, kind: str = "anthropic") -> dict[str, Any]:
    return {"name": name, "kind": kind, "base_url": sim.url, "api_key": PROVIDER_KEY}


def sdk(b: Balancer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=b.url, api_key="x", max_retries=0, default_headers=NO_DEDUP)


async def ask(b: Balancer, text: str, *, stream: bool = True) -> anthropic.types.Message:
    async with sdk(b) as client:
        messages: Any = [{"role": "user", "content": text}]
        if not stream:
            return await client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages)
        async with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=messages) as s:
            return await s.get_final_message()


def assert_healthy(b: Balancer, name: str) -> None:
    assert b.app.registry is not None
    health = b.app.registry.runtimes[name].health
    assert health.state is State.HEALTHY and health.consecutive_failures == 0


async def test_a_200k_token_prompt_skips_the_128k_target_for_the_1m_one(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    small = await start_sim(nursery, {"small-128k": 128_000})
    big = await start_sim(nursery, {"big-1m": 1_000_000})
    config = {
        "providers": [provider("small", small), provider("big", big)],
        "routes": [{"match": "claude-*", "targets": [
            {"provider": "small", "model": "small-128k", "context_window": 128_000},
            {"provider": "big", "model": "big-1m", "context_window": 1_000_000},
        ]}],
    }  # fmt: skip
    b = await balancer_for(config=config)
    message = await ask(b, long_prompt())
    assert message.content and message.stop_reason == "end_turn"
    assert small.requests == 0 and big.requests == 1
    [row] = await b.ledger_rows(1)
    skipped, served = row["attempts"]
    assert skipped["provider"] == "small" and skipped["skipped"] is True
    assert skipped["error"].startswith("skipped: context window 128000 < ")
    assert served["provider"] == "big" and served["error"] is None
    # A short prompt still goes to the first target.
    await ask(b, "hi")
    assert small.requests == 1


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_an_upstream_prompt_too_long_falls_over_and_the_provider_stays_healthy(
    nursery: trio.Nursery, balancer_for: BalancerFactory, kind: str
) -> None:
    """Windows unknown in the config: the first model's own 400 moves the request on."""
    first = await start_sim(nursery, {"sim-short": 1_000})
    second = await start_sim(nursery, {})
    config = {
        "providers": [provider("first", first, kind), provider("second", second)],
        "routes": [{"match": "claude-*", "targets": [
            {"provider": "first", "model": "sim-short"}, {"provider": "second", "model": "sim-long"},
        ]}],
    }  # fmt: skip
    b = await balancer_for(config=config)
    message = await ask(b, "ab. " * 3_000)  # ~4k tokens: past sim-short's 1k window
    assert message.content and first.requests == 1 and second.requests == 1
    assert_healthy(b, "first")
    [row] = await b.ledger_rows(1)
    too_long, served = row["attempts"]
    assert too_long["provider"] == "first" and too_long["status"] == 400 and not too_long.get("skipped")
    assert too_long["error"].endswith("(prompt too long)")
    assert served["provider"] == "second" and served["error"] is None and row["status"] == 200


async def test_with_no_larger_window_left_the_providers_400_is_relayed(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    first = await start_sim(nursery, {"sim-a": 1_000})
    second = await start_sim(nursery, {"sim-b": 1_000})
    config = {
        "providers": [provider("first", first), provider("second", second)],
        "routes": [{"match": "claude-*", "targets": [
            {"provider": "first", "model": "sim-a", "context_window": 1_000},
            {"provider": "second", "model": "sim-b", "context_window": 1_000},
        ]}],
    }  # fmt: skip
    b = await balancer_for(config=config)
    with pytest.raises(anthropic.BadRequestError) as info:
        # Both windows too small by the estimate: both kept (the largest), the first answers.
        await ask(b, "ab. " * 3_000, stream=False)
    assert info.value.body["error"]["message"].startswith("prompt is too long: ")  # type: ignore[index]
    assert first.requests == 1 and second.requests == 0  # the same window: no use trying it
    assert_healthy(b, "first")


@pytest.mark.parametrize(
    ("path", "code"), [("/v1/messages", None), ("/v1/chat/completions", "context_length_exceeded")]
)
async def test_the_simulator_answers_each_kinds_real_prompt_too_long(
    nursery: trio.Nursery, path: str, code: str | None
) -> None:
    sim = await start_sim(nursery, {})
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "ab. " * 300}]}
    async with httpx.AsyncClient(base_url=sim.url, trust_env=False) as client:
        r = await client.post(path, json=body, headers={"x-sim-context-window": "100"})
        assert r.status_code == 400 and prompt_too_long(400, r.content)
        assert r.json()["error"].get("code") == code
        r = await client.post(path, json=body, headers={"x-sim-context-window": "100000"})
        assert r.status_code == 200
