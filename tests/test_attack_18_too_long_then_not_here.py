"""Attack 18: ordering of "prompt too long" and "model not served here".

The first target says the prompt does not fit; the only larger target does not have the model
at all. Nobody can serve this prompt: the client should get the first provider's "prompt is
too long" 400 (Claude Code compacts on it). It gets 529 "every provider failed", which it
retries with the very same prompt."""

from __future__ import annotations

import trio

from .fakes import FakeUpstream, error_reply
from .helpers import NO_DEDUP, PROVIDER_KEY, BalancerFactory, message_body


async def test_too_long_then_no_such_model_relays_the_too_long_answer(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    small = await FakeUpstream(
        error_reply(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    ).start(nursery)
    big = await FakeUpstream(error_reply(404, "not_found_error", "model: big-1m")).start(nursery)
    config = {
        "providers": [
            {"name": "small", "kind": "anthropic", "base_url": small.url, "api_key": PROVIDER_KEY},
            {"name": "big", "kind": "anthropic", "base_url": big.url, "api_key": PROVIDER_KEY},
        ],
        "routes": [{"match": "claude-*", "targets": [
            {"provider": "small", "model": "small-200k", "context_window": 200_000},
            {"provider": "big", "model": "big-1m", "context_window": 1_000_000},
        ]}],
    }  # fmt: skip
    b = await balancer_for(config=config)
    r = await b.client.post("/v1/messages", json=message_body(model="claude-sonnet-4-6"), headers=NO_DEDUP)
    assert len(small.received) == 1 and len(big.received) == 1
    assert r.status_code == 400 and "prompt is too long" in r.text, (r.status_code, r.text)


async def test_no_such_model_then_too_long_relays_the_too_long_answer(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """The other order: first target lacks the model, the second says too long with no
    larger window left: that answer is final (relayed), as before."""
    a = await FakeUpstream(error_reply(404, "not_found_error", "model: a")).start(nursery)
    c = await FakeUpstream(
        error_reply(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    ).start(nursery)
    config = {
        "providers": [
            {"name": "a", "kind": "anthropic", "base_url": a.url, "api_key": PROVIDER_KEY},
            {"name": "c", "kind": "anthropic", "base_url": c.url, "api_key": PROVIDER_KEY},
        ],
    }
    b = await balancer_for(config=config)
    r = await b.client.post("/v1/messages", json=message_body(model="claude-sonnet-4-6"), headers=NO_DEDUP)
    assert r.status_code == 400 and "prompt is too long" in r.text, (r.status_code, r.text)
