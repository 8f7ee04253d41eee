"""Attack 18: an OpenAI-compatible provider whose first chunk has a non-list ``choices``
crashes the converter with a TypeError (not a ConversionError): the flight answers 500
"internal error in the balancer" instead of failing over to the next provider."""

from __future__ import annotations

import trio

from .fakes import FakeUpstream, Reply, anthropic_text_events, oai
from .helpers import NO_DEDUP, PROVIDER_KEY, BalancerFactory, message_body


async def test_a_malformed_openai_chunk_before_commit_fails_over(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    bad = await FakeUpstream(Reply(steps=[oai({"id": "c", "choices": 1})])).start(nursery)
    good = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    config = {
        "providers": [
            {"name": "p0", "kind": "openai", "base_url": bad.url + "/v1", "api_key": PROVIDER_KEY},
            {"name": "p1", "kind": "anthropic", "base_url": good.url, "api_key": PROVIDER_KEY},
        ]
    }
    b = await balancer_for(config=config)
    async with b.client.stream("POST", "/v1/messages", json=message_body(stream=True), headers=NO_DEDUP) as r:
        body = await r.aread()
    assert r.status_code == 200 and b"message_stop" in body, (r.status_code, body)
    assert len(good.received) == 1
