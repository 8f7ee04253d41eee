"""Attack 18: a count_tokens 404 that reads as "model not served here".

counting.py promises: a provider without the endpoint (404/405) gets the local estimate at
once, "a count is not worth another provider's call". The new MODEL_NOT_HERE verdict turns a
non-JSON 404 (a gateway's "404 page not found") or a 404 mentioning "model" into a failover.
"""

from __future__ import annotations

import json

import trio

from trio_balancer.protocol.tokens import estimate_request

from .fakes import JSON_HEADERS, FakeUpstream, Received, Reply, anthropic_message, error_reply
from .helpers import NO_DEDUP, BalancerFactory, provider_config

MESSAGES = [{"role": "user", "content": "hello world " * 50}]
COUNT = {"model": "claude-opus-4-6", "messages": MESSAGES}
OK = Reply(headers=JSON_HEADERS, steps=[json.dumps(anthropic_message("ok")).encode()])
NO_ENDPOINT_PAGE = Reply(status=404, headers=[("content-type", "text/plain")], steps=[b"404 page not found"])
NO_ENDPOINT_JSON = error_reply(404, "not_found_error", "no route for this model endpoint")


def by_path(count: Reply):
    def script(r: Received) -> Reply:
        return count if "/count_tokens" in r.target else OK

    return script


def counted(n: int) -> Reply:
    return Reply(headers=JSON_HEADERS, steps=[json.dumps({"input_tokens": n}).encode()])


async def test_count_404_page_is_estimated_at_once_without_asking_the_next_provider(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    p0 = await FakeUpstream(by_path(NO_ENDPOINT_PAGE)).start(nursery)
    p1 = await FakeUpstream(by_path(counted(7))).start(nursery)
    b = await balancer_for(config=provider_config(p0, p1))
    r = await b.client.post("/v1/messages/count_tokens", json=COUNT, headers=NO_DEDUP)
    assert r.status_code == 200, r.text
    assert r.headers.get("x-balancer-estimated") == "1", r.text
    assert r.json()["input_tokens"] == estimate_request(COUNT)
    assert p1.received == []  # "a count is not worth another provider's call"


async def test_count_404_page_then_overloaded_is_still_the_estimate(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Before baadd31 this was the estimate (404 final); now the client gets an error."""
    p0 = await FakeUpstream(by_path(NO_ENDPOINT_PAGE)).start(nursery)
    p1 = await FakeUpstream(by_path(error_reply(529, "overloaded_error"))).start(nursery)
    b = await balancer_for(config=provider_config(p0, p1))
    r = await b.client.post("/v1/messages/count_tokens", json=COUNT, headers=NO_DEDUP)
    assert r.status_code == 200 and r.headers.get("x-balancer-estimated") == "1", (r.status_code, r.text)


async def test_count_json_404_naming_model_then_overloaded_is_still_the_estimate(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    p0 = await FakeUpstream(by_path(NO_ENDPOINT_JSON)).start(nursery)
    p1 = await FakeUpstream(by_path(error_reply(503, "api_error"))).start(nursery)
    b = await balancer_for(config=provider_config(p0, p1))
    r = await b.client.post("/v1/messages/count_tokens", json=COUNT, headers=NO_DEDUP)
    assert r.status_code == 200 and r.headers.get("x-balancer-estimated") == "1", (r.status_code, r.text)
