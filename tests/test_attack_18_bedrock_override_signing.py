"""Attack 18: a Bedrock provider's ``headers`` replace its own and are signed: the simulator
verifies SigV4, so every override here must still give a 200."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

from trio_balancer.tools import simulator

from .helpers import NO_DEDUP, BalancerFactory


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"ACCEPT": "application/vnd.amazon.eventstream"},
        {"X-Custom-Thing": "a  b\tc"},  # inner whitespace: SigV4 folds it in the canonical form
        {"X-Amz-Date": "20000101T000000Z"},
        {"Authorization": "Bearer nope"},
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_bedrock_signs_what_it_sends_with_overrides(
    nursery: trio.Nursery, balancer_for: BalancerFactory, aws_env: None, headers: dict[str, str], stream: bool
) -> None:
    sim = simulator.Simulator(simulator.SimOptions(eps=0, events=3))
    port = await nursery.start(partial(simulator.serve, sim))
    row: dict[str, Any] = {
        "name": "bedrock", "kind": "bedrock", "region": "us-east-1",
        "base_url": f"http://127.0.0.1:{port}", "headers": headers,
    }  # fmt: skip
    b = await balancer_for(config={"providers": [row]})
    body = {"model": "claude-sonnet-4-6", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    r = await b.client.post("/v1/messages", json=body, headers=NO_DEDUP)
    assert r.status_code == 200, r.text
    if stream:
        assert b"message_stop" in r.content
