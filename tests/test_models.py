"""``GET /v1/models`` as Claude Code's model picker reads it, and ``HEAD /``, its probe.

Claude Code (>= 2.1.129, with gateway discovery on) calls ``GET /v1/models?limit=1000`` at
start, expects Anthropic's format, keeps the ids containing ``claude`` or ``anthropic`` for its
picker and gives up after about 3 s; it may probe the base URL with ``HEAD /`` first. Both are
answered from the config, never from a provider. Pagination is Anthropic's: ``limit`` (1 to
1000, default 20), ``after_id`` / ``before_id``, and ``has_more``, ``first_id``, ``last_id``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
import trio

from trio_balancer.app.models import models_page
from trio_balancer.config import parse_config
from trio_balancer.errors import InvalidRequest

from .fakes import FakeUpstream
from .helpers import PROVIDER_KEY, Balancer, BalancerFactory, assert_error

MODELS = ["claude-opus-4-6", "claude-sonnet-4-6", "deepseek-chat", "claude-haiku-4-5", "kimi-k2"]


def config_of(url: str, models: list[str]) -> dict[str, Any]:
    return {"providers": [{"name": "p", "kind": "anthropic", "base_url": url, "api_key": PROVIDER_KEY,
                           "models": models}]}  # fmt: skip


def page(models: list[str], query: str) -> dict[str, Any]:
    return models_page(parse_config(config_of("http://127.0.0.1:1", models)), query.encode())


def sdk(b: Balancer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=b.url, api_key="x", max_retries=0)


class TestPages:
    def test_everything_on_one_page_of_1000(self) -> None:
        result = page(MODELS, "limit=1000")
        assert [m["id"] for m in result["data"]] == MODELS
        assert result["has_more"] is False
        assert (result["first_id"], result["last_id"]) == ("claude-opus-4-6", "kimi-k2")
        assert result["data"][0] == {
            "type": "model",
            "id": "claude-opus-4-6",
            "display_name": "claude-opus-4-6",
            "created_at": "2025-01-01T00:00:00Z",
        }

    def test_pages_after_and_before(self) -> None:
        first = page(MODELS, "limit=2")
        assert [m["id"] for m in first["data"]] == MODELS[:2] and first["has_more"] is True
        second = page(MODELS, f"limit=2&after_id={first['last_id']}")
        assert [m["id"] for m in second["data"]] == MODELS[2:4] and second["has_more"] is True
        last = page(MODELS, f"limit=2&after_id={second['last_id']}")
        assert [m["id"] for m in last["data"]] == MODELS[4:] and last["has_more"] is False
        back = page(MODELS, "limit=2&before_id=kimi-k2")
        assert [m["id"] for m in back["data"]] == MODELS[2:4] and back["has_more"] is True
        assert page(MODELS, "limit=3&before_id=deepseek-chat")["has_more"] is False

    def test_the_default_limit_is_twenty(self) -> None:
        many = [f"claude-m{i}" for i in range(25)]
        result = page(many, "")
        assert len(result["data"]) == 20 and result["has_more"] is True

    def test_an_empty_list(self) -> None:
        assert page([], "limit=1000") == {"data": [], "has_more": False, "first_id": None, "last_id": None}

    @pytest.mark.parametrize(
        ("query", "what"),
        [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=many", "limit"),
            ("after_id=nope", "after_id"),
            ("before_id=nope", "before_id"),
            ("after_id=kimi-k2&before_id=claude-opus-4-6", "before_id"),
        ],
    )
    def test_a_bad_query_is_a_400_naming_it(self, query: str, what: str) -> None:
        with pytest.raises(InvalidRequest, match=what):
            page(MODELS, query)


async def test_claude_codes_discovery_call_through_the_sdk(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """The picker's call, and the SDK's own paging over small pages: the same ids, in order,
    and no provider is asked. Non-claude ids are listed too: Claude Code leaves them out of its
    picker, other clients (and ``ANTHROPIC_MODEL``) use them."""
    up = await FakeUpstream().start(nursery)
    b = await balancer_for(config=config_of(up.url, MODELS))
    async with sdk(b) as client:
        with trio.fail_after(3):  # Claude Code gives up after about 3 s
            listed = await client.models.list(limit=1000)
        assert [m.id for m in listed.data] == MODELS and listed.has_more is False
        paged = [m.id async for m in client.models.list(limit=2)]
        assert paged == MODELS
        picker = [m.id for m in listed.data if "claude" in m.id.lower() or "anthropic" in m.id.lower()]
        assert picker == ["claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"]
    assert up.received == []
    assert_error(await b.client.get("/v1/models", params={"limit": "0"}), 400, "invalid_request_error")


async def test_head_and_get_of_the_base_url(nursery: trio.Nursery, balancer_for: BalancerFactory) -> None:
    up = await FakeUpstream().start(nursery)
    b = await balancer_for(up)
    head = await b.client.head("/")
    assert head.status_code == 200 and head.content == b""
    get = await b.client.get("/")
    assert get.status_code == 200 and get.json()["status"] == "ok"
    assert up.received == []
    assert_error(await b.client.post("/"), 405, "invalid_request_error")


@pytest.mark.parametrize("limit", ["%C2%B2", "9" * 5000])
async def test_an_odd_limit_is_a_400_naming_it(
    upstream: FakeUpstream, balancer_for: BalancerFactory, limit: str
) -> None:
    """ "²" is a digit to str.isdigit but not to int; 5000 digits pass Python's int bound: both
    were a 500 with an empty body (found by an attack)."""
    b = await balancer_for(upstream)
    r = await b.client.get(f"/v1/models?limit={limit}")
    assert_error(r, 400, "invalid_request_error")
    assert "limit" in r.text and len(r.text) < 500
