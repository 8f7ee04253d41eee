"""Which family signed a thinking block is known on every instance: shared through Redis.

A conversation whose thinking was signed by provider B through instance y continues through
instance x to Anthropic: x never saw B's signature, and without the shared book would take it
for Anthropic's (the default for an unknown one) and get A's 400.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import redis
import trio

from trio_balancer.config import parse_config

from ..fakes import FakeUpstream
from ..helpers import Balancer, start_balancer
from ..signing_fakes import Answer, SigningProvider
from .servers import RedisServer

THINKING = {"type": "enabled", "budget_tokens": 1024}


def config(name: str, tmp: Path, redis_url: str, a: FakeUpstream, b: FakeUpstream) -> dict[str, Any]:
    return {
        "ledger": {"enabled": False},
        "cluster": {"redis_url": redis_url, "instance_id": name},
        "providers": [
            {"name": "a", "kind": "anthropic", "base_url": a.url, "api_key": "k"},
            {"name": "b", "kind": "anthropic", "base_url": b.url, "api_key": "k", "preset": "anthropic-compatible"},
        ],
        "routes": [{"match": "to-a", "targets": [{"provider": "a"}]}, {"match": "to-b", "targets": [{"provider": "b"}]}],
    }  # fmt: skip


async def stream(inst: Balancer, model: str, messages: list[dict[str, Any]]) -> anthropic.types.Message:
    async with (
        anthropic.AsyncAnthropic(base_url=inst.url, api_key="x", max_retries=0) as client,
        client.messages.stream(
            model=model, max_tokens=4096, thinking=THINKING,  # type: ignore[arg-type]
            messages=messages,  # type: ignore[arg-type]
        ) as s,
    ):  # fmt: skip
        return await s.get_final_message()


async def shared_keys(url: str) -> int:
    def count() -> int:
        with redis.Redis.from_url(url) as client:
            return len(list(client.scan_iter("trio-balancer:thinking:*")))

    return await trio.to_thread.run_sync(count)


async def test_another_instance_knows_whose_a_signature_is(
    nursery: trio.Nursery, tmp_path: Path, redis_srv: RedisServer
) -> None:
    a = SigningProvider("anthropic", [Answer(text="A answers")])
    b = SigningProvider("b", [Answer(thinking="B thinks", text="B answers")])
    a_up, b_up = await FakeUpstream(a).start(nursery), await FakeUpstream(b).start(nursery)
    x, y = [
        await start_balancer(nursery, parse_config(config(n, tmp_path, redis_srv.url, a_up, b_up)))
        for n in "xy"
    ]
    history: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    first = await stream(y, "to-b", history)
    history += [
        {"role": "assistant", "content": [blk.model_dump(exclude_none=True) for blk in first.content]},
        {"role": "user", "content": "and now?"},
    ]
    with trio.fail_after(5):  # y writes what it saw to Redis in the background: no event to wait on
        while await shared_keys(redis_srv.url) < 1:  # noqa: ASYNC110
            await trio.sleep(0.02)
    second = await stream(x, "to-a", history)
    assert second.content[-1].text == "A answers"  # type: ignore[union-attr]
    assert not any(blk.get("type") == "thinking" for m in a.bodies[0]["messages"] for blk in _blocks(m))
    signature = first.content[0].signature  # type: ignore[union-attr]
    assert x.app.state.thinking.family_of(signature) == "b"  # learned from Redis, on the miss


async def test_without_redis_a_request_does_not_wait_for_it(
    nursery: trio.Nursery, tmp_path: Path, redis_srv: RedisServer
) -> None:
    a = SigningProvider("anthropic", [Answer(text="A answers")])
    a_up, b_up = (
        await FakeUpstream(a).start(nursery),
        await FakeUpstream(SigningProvider("b", [])).start(nursery),
    )
    x = await start_balancer(nursery, parse_config(config("x", tmp_path, redis_srv.url, a_up, b_up)))
    redis_srv.stop()
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "?", "signature": "from-b-unknown"},
                                          {"type": "text", "text": "x"}]},
        {"role": "user", "content": "and now?"},
    ]  # fmt: skip
    a.signed.add("from-b-unknown")  # unknown to the book: taken for Anthropic's, and A made it
    with trio.fail_after(2):
        second = await stream(x, "to-a", history)
    assert second.content[-1].text == "A answers"  # type: ignore[union-attr]


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return content if isinstance(content, list) else []
