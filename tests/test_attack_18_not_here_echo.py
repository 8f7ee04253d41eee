"""Attack 18: the Bedrock-only 400 phrases of model_not_served are matched on any kind's
400, anywhere in the body, so a client's own words echoed in an ordinary invalid_request_error
make the balancer send the (bad) request to every provider."""

from __future__ import annotations

import trio

from .fakes import JSON_HEADERS, FakeUpstream, Received, Reply, anthropic_error
from .helpers import NO_DEDUP, BalancerFactory, message_body


def echoing_400(r: Received) -> Reply:
    """An Anthropic-style 400 that quotes the offending value the client sent (many
    Anthropic-compatible servers, and pydantic-style validators, echo the input)."""
    role = r.json()["messages"][0]["role"]
    msg = f"messages.0.role: Input should be 'user' or 'assistant', got {role!r}"
    return Reply(
        status=400, headers=list(JSON_HEADERS), steps=[anthropic_error("invalid_request_error", msg)]
    )


async def test_a_400_echoing_the_clients_text_is_final_not_sent_to_every_provider(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    ups = [await FakeUpstream(echoing_400).start(nursery) for _ in range(3)]
    b = await balancer_for(*ups)
    body = message_body(stream=False)
    body["messages"][0]["role"] = "use an inference profile"
    r = await b.client.post("/v1/messages", json=body, headers=NO_DEDUP)
    assert r.status_code == 400, r.text
    # A request that is wrong anywhere: only the first provider should have been asked.
    assert [len(u.received) for u in ups] == [1, 0, 0]


async def test_anthropic_400_naming_inference_profile_in_a_tool_description_is_final(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """The check reads the whole body: an Anthropic 400 whose message quotes part of the
    request (here a tool's description) fails over to every provider."""
    msg = "tools.0.input_schema: JSON schema is invalid (description: 'pick an inference profile')"
    rep = Reply(status=400, headers=list(JSON_HEADERS), steps=[anthropic_error("invalid_request_error", msg)])
    ups = [await FakeUpstream(rep).start(nursery) for _ in range(3)]
    b = await balancer_for(*ups)
    r = await b.client.post("/v1/messages", json=message_body(stream=False), headers=NO_DEDUP)
    assert r.status_code == 400, r.text
    assert [len(u.received) for u in ups] == [1, 0, 0]
