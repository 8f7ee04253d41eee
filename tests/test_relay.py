"""The relay's bookkeeping on in-memory bodies: what it publishes, counts and fails on.

No sockets: a response is a list of chunks, the outlet records what it is given. The socket
tests (test_passthrough, test_failover, test_openai_provider...) run the same code through
Hypercorn and httpx.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.config import ProviderConfig
from trio_balancer.errors import error_body
from trio_balancer.flight.attempt import IdleTimer, UpstreamResponse
from trio_balancer.flight.failures import AttemptFailed
from trio_balancer.flight.hub import Head, Item
from trio_balancer.flight.relay import Relay, RelayLimits
from trio_balancer.policy.health import FailureKind
from trio_balancer.protocol import events as ev
from trio_balancer.protocol.sse import encode_event

SECRET = "sk-relay-test-secret-0001"
ANTHROPIC = ProviderConfig(name="p", kind="anthropic", base_url="http://127.0.0.1:9", api_key=SECRET)
OPENAI = ProviderConfig(name="o", kind="openai", base_url="http://127.0.0.1:9", api_key=SECRET)
PAYLOAD = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


DEFAULT_LIMITS = RelayLimits()


class Outlet:
    def __init__(self) -> None:
        self.committed = False
        self.head: Head | None = None
        self.items: list[Item] = []

    async def commit(self, head: Head, first: bytes | None, *, held_events: int = 0) -> None:
        self.committed = True
        self.head = head
        if first:
            self.items.append(first)

    async def publish(self, item: Item) -> None:
        self.items.append(item)

    @property
    def body(self) -> bytes:
        return b"".join(i for i in self.items if isinstance(i, bytes))


async def chunks_of(parts: list[bytes]) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part


async def relay(
    provider: ProviderConfig, parts: list[bytes], *, sse: bool, limits: RelayLimits = DEFAULT_LIMITS
) -> tuple[Relay, Outlet]:
    outlet = Outlet()
    r = Relay(provider, PAYLOAD, outlet, [SECRET], limits=limits, forward=lambda _s: None)
    idle = IdleTimer(trio.CancelScope(), 60.0)
    await r.run(UpstreamResponse([(b"content-type", b"x")], sse, chunks_of(parts), idle))
    return r, outlet


def anthropic_stream(texts: list[str]) -> list[bytes]:
    start = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "usage": {"input_tokens": 9},
    }
    return [
        ev.encode(ev.message_start(start)),
        ev.encode(ev.content_block_start(0, {"type": "text", "text": ""})),
        *(ev.encode(ev.content_block_delta(0, {"type": "text_delta", "text": t})) for t in texts),
        ev.encode(ev.content_block_stop(0)),
        ev.encode(ev.message_delta({"stop_reason": "end_turn", "stop_sequence": None}, {"output_tokens": 4})),
        ev.encode(ev.message_stop()),
    ]


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(points) if b > a]


class TestSSE:
    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=8), st.lists(st.integers(0, 5000)))
    def test_counts_are_what_was_published(self, texts: list[str], cuts: list[int]) -> None:
        wire = b"".join(anthropic_stream(texts))
        r, outlet = trio.run(partial(relay, ANTHROPIC, split(wire, cuts), sse=True))
        assert outlet.body == wire and r.completed
        assert r.bytes == len(wire) and r.events == len(texts) + 5
        usage = r.tracker.result(PAYLOAD)
        assert (usage.input_tokens, usage.output_tokens) == (9, 4)

    async def test_an_unterminated_last_event_is_ended_for_the_client(self) -> None:
        wire = b"".join(anthropic_stream(["a"]))
        r, outlet = await relay(ANTHROPIC, [wire[:-1]], sse=True)  # one newline short
        assert outlet.body == wire and r.completed

    async def test_a_cut_after_the_commit_point_fails_the_attempt_but_kept_what_went_out(self) -> None:
        events = anthropic_stream(["a", "b"])
        with pytest.raises(AttemptFailed) as caught:
            await relay(ANTHROPIC, [b"".join(events[:3])], sse=True)
        assert "before message_stop" in caught.value.error.message

    async def test_a_response_over_the_size_bound_is_cut_off(self) -> None:
        wire = b"".join(anthropic_stream(["x" * 100] * 10))
        with pytest.raises(AttemptFailed) as caught:
            await relay(
                ANTHROPIC, split(wire, [300, 600]), sse=True, limits=RelayLimits(max_response_bytes=500)
            )
        assert "larger than 500 bytes" in caught.value.error.message

    async def test_a_provider_error_event_mid_stream_is_scrubbed_for_the_client(self) -> None:
        events = anthropic_stream(["a"])
        leak = encode_event("error", error_body("overloaded_error", f"key {SECRET} is busy").decode())
        outlet = Outlet()
        r = Relay(ANTHROPIC, PAYLOAD, outlet, [SECRET], limits=RelayLimits(), forward=lambda _s: None)
        idle = IdleTimer(trio.CancelScope(), 60.0)
        with pytest.raises(AttemptFailed) as caught:
            await r.run(UpstreamResponse([], True, chunks_of([b"".join(events[:3]) + leak]), idle))
        assert caught.value.sent_to_client and caught.value.verdict.kind is FailureKind.OVERLOADED
        assert outlet.body.startswith(b"".join(events[:3])) and b"overloaded_error" in outlet.body
        assert SECRET.encode() not in outlet.body

    async def test_an_auth_error_mid_stream_reaches_the_client_as_a_provider_failure(self) -> None:
        events = anthropic_stream(["a"])
        auth = encode_event("error", error_body("authentication_error", "invalid x-api-key").decode())
        outlet = Outlet()
        r = Relay(ANTHROPIC, PAYLOAD, outlet, [SECRET], limits=RelayLimits(), forward=lambda _s: None)
        idle = IdleTimer(trio.CancelScope(), 60.0)
        with pytest.raises(AttemptFailed) as caught:
            await r.run(UpstreamResponse([], True, chunks_of([b"".join(events[:3]) + auth]), idle))
        assert caught.value.verdict.kind is FailureKind.AUTH
        assert (
            b"authentication_error" not in outlet.body
            and b"rejected the balancer's credentials" in outlet.body
        )


class TestJSON:
    async def test_a_json_answer_is_published_whole_and_counted_as_published(self) -> None:
        message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}],
                   "usage": {"input_tokens": 5, "output_tokens": 2}}  # fmt: skip
        body = json.dumps(message).encode()
        r, outlet = await relay(ANTHROPIC, split(body, [10, 40]), sse=False)
        assert outlet.items == [body] and (r.events, r.bytes) == (0, len(body)) and r.completed
        assert r.tracker.result(PAYLOAD).output_tokens == 2

    async def test_an_error_inside_a_200_is_that_error_with_its_status(self) -> None:
        body = error_body("overloaded_error", f"busy ({SECRET})")
        with pytest.raises(AttemptFailed) as caught:
            await relay(ANTHROPIC, [body], sse=False)
        answer = caught.value.answer
        assert answer is not None and answer.status == 529 and SECRET.encode() not in answer.body

    async def test_a_converted_answer_counts_the_bytes_the_client_gets(self) -> None:
        completion: dict[str, Any] = {
            "id": "c1", "object": "chat.completion", "model": "gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }  # fmt: skip
        r, outlet = await relay(OPENAI, [json.dumps(completion).encode()], sse=False)
        sent = json.loads(outlet.body)
        assert sent["content"] == [{"type": "text", "text": "hello"}] and r.bytes == len(outlet.body)
        assert r.usage_reported is True

    async def test_a_cut_json_answer_that_is_not_json_fails_over(self) -> None:
        with pytest.raises(AttemptFailed) as caught:
            await relay(OPENAI, [b'{"id": "c1", "choi'], sse=False)
        assert caught.value.verdict.retry and not caught.value.sent_to_client
