"""Shared streams: identical requests share one upstream response; every listener gets all of it."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

import anthropic
import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_balancer.flight import Flight, Head, SharePolicy, UpstreamRequest
from trio_balancer.protocol.dedup import ResponseCache, signature
from trio_balancer.protocol.reshape import MessageAssembler, message_to_events
from trio_balancer.protocol.sse import SSEDecoder

from .fakes import (
    HANG,
    JSON_HEADERS,
    FakeUpstream,
    PacedStream,
    Pause,
    Reply,
    anthropic_text_events,
    error_reply,
    interleave,
    mock_providers,
    sse,
)
from .helpers import BODY, CLIENT_KEY, Balancer, BalancerFactory, wait_for_listeners

# 0 message_start, 1 content_block_start, 2 ping, 3 + i the delta "w{i} ", then the three closing
# events. Where a test needs a client to join or leave mid-answer, a Pause holds the provider
# there until it has.
EVENTS = anthropic_text_events([f"w{i} " for i in range(20)])
WIRE = b"".join(EVENTS)


async def read_all(
    b: Balancer, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes]:
    async with b.client.stream("POST", "/v1/messages", json=body or BODY, headers=headers or {}) as r:
        return r, await r.aread()


class TestSharing:
    async def test_ten_identical_requests_one_upstream(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        hold = Pause()
        upstream.script(Reply(steps=[*EVENTS[:4], hold, *EVENTS[4:]]))
        results: list[tuple[str, bytes]] = []

        async def one() -> None:
            r, body = await read_all(balancer)
            results.append((r.headers["x-balancer-dedup"], body))

        async with trio.open_nursery() as n:
            for _ in range(10):
                n.start_soon(one)
            await wait_for_listeners(balancer.app, 10)  # all ten arrived while it was answering
            hold.release()
        assert len(upstream.received) == 1
        assert [body for _, body in results] == [WIRE] * 10
        roles = sorted(role for role, _ in results)
        assert roles.count("leader") == 1 and roles.count("follower") == 9

    async def test_late_follower_gets_every_event(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        hold = Pause()
        upstream.script(Reply(steps=[*EVENTS[:13], hold, *EVENTS[13:]]))
        leader: list[bytes] = []
        follower: list[tuple[httpx.Response, bytes]] = []
        async with trio.open_nursery() as n:

            async def lead() -> None:
                leader.append((await read_all(balancer))[1])

            async def follow() -> None:
                follower.append(await read_all(balancer))

            n.start_soon(lead)
            await hold.wait_reached()  # half the events are out
            n.start_soon(follow)
            await wait_for_listeners(balancer.app, 2)
            hold.release()
        ((r, body),) = follower
        assert r.headers["x-balancer-dedup"] == "follower"
        assert body == WIRE == leader[0]
        assert len(upstream.received) == 1

    async def test_leader_leaving_keeps_followers_streaming(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        joined, left = Pause(), Pause()
        upstream.script(Reply(steps=[*EVENTS[:5], joined, *EVENTS[5:9], left, *EVENTS[9:]]))
        follower: list[bytes] = []
        async with trio.open_nursery() as n:
            async with (
                balancer.client.stream("POST", "/v1/messages", json=BODY) as r,
                aclosing(r.aiter_raw()) as it,
            ):
                assert r.headers["x-balancer-dedup"] == "leader"

                async def follow() -> None:
                    follower.append((await read_all(balancer))[1])

                n.start_soon(follow)
                await wait_for_listeners(balancer.app, 2)
                joined.release()
                async for chunk in it:
                    if b"w5" in chunk:
                        break  # the leader leaves
            await wait_for_listeners(balancer.app, 1)  # it has left, the provider mid-answer
            left.release()
        assert follower == [WIRE]
        assert upstream.received[0].finished.is_set() and not upstream.received[0].disconnected.is_set()

    async def test_all_leaving_closes_the_upstream(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        hold = Pause()
        upstream.script(Reply(steps=[*EVENTS[:4], hold, *EVENTS[4:6], HANG]))  # up to "w2 ", then no more

        async def leave_early() -> None:
            async with (
                balancer.client.stream("POST", "/v1/messages", json=BODY) as r,
                aclosing(r.aiter_raw()) as it,
            ):
                async for chunk in it:
                    if b"w2" in chunk:
                        return

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(leave_early)
            await wait_for_listeners(balancer.app, 3)  # all three on the one flight
            hold.release()
        with trio.fail_after(2):
            await upstream.received[0].disconnected.wait()
        await balancer.wait_idle()
        assert len(upstream.received) == 1

    async def test_orphans_finish_into_the_cache_when_configured(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(
            config={
                "dedup": {"finish_orphans": True},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            }
        )
        hold = Pause()
        upstream.script(Reply(steps=[*EVENTS[:4], hold, *EVENTS[4:]]))
        async with b.client.stream("POST", "/v1/messages", json=BODY) as r, aclosing(r.aiter_raw()) as it:
            async for _ in it:
                break
        await wait_for_listeners(b.app, 0)  # the client left mid-answer
        hold.release()
        await b.wait_idle()
        assert upstream.received[0].finished.is_set()
        r, body = await read_all(b)
        assert r.headers["x-balancer-dedup"] == "cache" and body == WIRE

    async def test_cache_hit_then_opt_out(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(Reply(steps=EVENTS))
        first, _ = await read_all(balancer)
        await balancer.wait_idle()
        r, body = await read_all(balancer)
        assert (first.headers["x-balancer-dedup"], r.headers["x-balancer-dedup"]) == ("leader", "cache")
        assert body == WIRE and len(upstream.received) == 1
        r, body = await read_all(balancer, headers={"x-balancer-no-dedup": "1"})
        assert r.headers["x-balancer-dedup"] == "off" and body == WIRE
        assert len(upstream.received) == 2

    async def test_errors_and_cut_streams_never_cached(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(
            [
                error_reply(529, "overloaded_error"),
                Reply(steps=[*EVENTS[:6]]),  # ends without message_stop
                Reply(steps=EVENTS),
            ]
        )
        assert (await read_all(balancer))[0].status_code == 529
        await balancer.wait_idle()
        assert b"event: error" in (await read_all(balancer))[1]
        await balancer.wait_idle()
        assert (await read_all(balancer))[1] == WIRE
        assert len(upstream.received) == 3

    @pytest.mark.parametrize(
        ("other_body", "other_headers"),
        [
            ({**BODY, "temperature": 0.2}, {}),
            (BODY, {"x-api-key": "sk-ant-someone-else-1234567"}),
            (BODY, {"anthropic-beta": "interleaved-thinking-2025-05-14"}),
            ({**BODY, "max_tokens": 65}, {}),
        ],
    )
    async def test_what_does_not_share(
        self,
        upstream: FakeUpstream,
        balancer: Balancer,
        other_body: dict[str, Any],
        other_headers: dict[str, str],
    ) -> None:
        upstream.script(Reply(steps=interleave(EVENTS, 0.01)))
        async with trio.open_nursery() as n:
            n.start_soon(read_all, balancer, BODY, {"x-api-key": CLIENT_KEY})
            n.start_soon(read_all, balancer, other_body, {"x-api-key": CLIENT_KEY, **other_headers})
        assert len(upstream.received) == 2

    async def test_metadata_and_stream_flag_do_not_split(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(Reply(steps=interleave(EVENTS, 0.01)))
        async with trio.open_nursery() as n:
            n.start_soon(read_all, balancer, {**BODY, "metadata": {"user_id": "session-a"}})
            n.start_soon(read_all, balancer, {**BODY, "metadata": {"user_id": "session-b"}})
        assert len(upstream.received) == 1

    async def test_ledger_roles(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        hold = Pause()
        upstream.script(Reply(steps=[*EVENTS[:4], hold, *EVENTS[4:]]))
        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(read_all, balancer)
            await wait_for_listeners(balancer.app, 3)  # a leader and two followers
            hold.release()
        await balancer.wait_idle()
        await read_all(balancer)
        rows = await balancer.ledger_rows(4)
        by_role = {r["dedup_role"]: r for r in rows}
        assert sorted(r["dedup_role"] for r in rows) == ["cache", "follower", "follower", "leader"]
        assert by_role["leader"]["output_tokens"] > 0 and by_role["leader"]["cost_usd"] > 0
        for role in ("follower", "cache"):
            assert by_role[role]["cost_usd"] == 0 and by_role[role]["output_tokens"] == 0
            assert by_role[role]["usage_source"] == "shared" and by_role[role]["provider"] == "p0"


THINKING_TOOL = [
    sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_t",
                "type": "message",
                "role": "assistant",
                "model": "claude-opus-4-6",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 30, "output_tokens": 1},
            },
        },
    ),
    sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
    ),
    sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Need the file."},
        },
    ),
    sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBsig=="},
        },
    ),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
        },
    ),
    sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"file_path": "/tmp/'},
        },
    ),
    sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'a.txt"}'},
        },
    ),
    sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
    sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 41},
        },
    ),
    sse("message_stop", {"type": "message_stop"}),
]
EXPECTED_MESSAGE = {
    "id": "msg_t", "type": "message", "role": "assistant", "model": "claude-opus-4-6",
    "content": [{"type": "thinking", "thinking": "Need the file.", "signature": "EqQBsig=="},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/tmp/a.txt"}}],
    "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 41},
}  # fmt: skip


class TestForms:
    async def test_non_stream_duplicate_gets_json_with_thinking_and_tool_use(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        hold = Pause()
        upstream.script(Reply(steps=[*THINKING_TOOL[:3], hold, *THINKING_TOOL[3:]]))
        out: dict[str, Any] = {}

        async def as_sse() -> None:
            out["sse"] = (await read_all(balancer))[1]

        async def as_json() -> None:
            out["json"] = await balancer.client.post("/v1/messages", json={**BODY, "stream": False})

        async with trio.open_nursery() as n:
            n.start_soon(as_sse)
            await hold.wait_reached()  # the stream is under way
            n.start_soon(as_json)
            await wait_for_listeners(balancer.app, 2)
            hold.release()
        r = out["json"]
        assert r.headers["x-balancer-dedup"] == "follower" and r.headers["content-type"] == "application/json"
        assert r.json() == EXPECTED_MESSAGE
        assert out["sse"] == b"".join(THINKING_TOOL) and len(upstream.received) == 1

    async def test_stream_duplicate_of_a_json_flight_gets_events(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        hold = Pause()
        upstream.script(Reply(headers=JSON_HEADERS, steps=[hold, json.dumps(EXPECTED_MESSAGE).encode()]))
        out: dict[str, Any] = {}

        async def as_json() -> None:
            # Both through the SDK: it sends its anthropic-version, which is part of the signature.
            async with anthropic.AsyncAnthropic(base_url=balancer.url, api_key="x", max_retries=0) as client:
                out["json"] = await client.messages.create(
                    model=BODY["model"], max_tokens=64, messages=BODY["messages"]
                )

        async def as_stream() -> None:
            async with (
                anthropic.AsyncAnthropic(base_url=balancer.url, api_key="x", max_retries=0) as client,
                client.messages.stream(model=BODY["model"], max_tokens=64, messages=BODY["messages"]) as s,
            ):
                out["final"] = await s.get_final_message()

        async with trio.open_nursery() as n:
            n.start_soon(as_json)
            await hold.wait_reached()  # the JSON answer is under way
            n.start_soon(as_stream)
            await wait_for_listeners(balancer.app, 2)
            hold.release()
        assert out["json"].model_dump(exclude_none=True)["content"] == EXPECTED_MESSAGE["content"]
        assert out["final"].model_dump(exclude_none=True)["content"] == EXPECTED_MESSAGE["content"]
        assert len(upstream.received) == 1

    def test_round_trip(self) -> None:
        decoder, assembler = SSEDecoder(), MessageAssembler()
        for e in decoder.feed(b"".join(message_to_events(EXPECTED_MESSAGE))):
            assembler.feed(e)
        assert assembler.message() == EXPECTED_MESSAGE


class TestPieces:
    def test_cache_ttl_and_lru_bytes(self) -> None:
        cache = ResponseCache(ttl_s=60, max_bytes=2000)
        cache.put("a", 0.0, status=200, headers=[], chunks=[b"x" * 500], sse=True)
        cache.put("b", 1.0, status=200, headers=[], chunks=[b"y" * 500], sse=True)
        assert cache.get("a", 59.9) is not None
        assert cache.get("a", 60.0) is None  # expired
        cache.put("c", 2.0, status=200, headers=[], chunks=[b"z" * 900], sse=True)
        cache.put("d", 3.0, status=200, headers=[], chunks=[b"w" * 900], sse=True)
        assert cache.get("b", 4.0) is None and cache.bytes <= 2000  # least recently used went first
        assert not cache.put("huge", 0.0, status=200, headers=[], chunks=[b"h" * 5000], sse=True)

    def test_signature(self) -> None:
        base = dict(
            path="/v1/messages", query=b"", headers=[(b"anthropic-version", b"2023-06-01")], identity="key-1"
        )
        s = signature(BODY, **base)  # type: ignore[arg-type]
        assert s == signature({**BODY, "stream": False, "metadata": {"user_id": "u"}}, **base)  # type: ignore[arg-type]
        assert s == signature(dict(reversed(list(BODY.items()))), **base)  # type: ignore[arg-type]
        assert s != signature(BODY, **{**base, "identity": "key-2"})  # type: ignore[arg-type]
        assert s != signature(BODY, **{**base, "query": b"beta=true"})  # type: ignore[arg-type]
        assert signature({**BODY, "max_tokens": 1}, **base, include_max_tokens=False) == signature(
            BODY, **base, include_max_tokens=False
        )  # type: ignore[arg-type]

    def test_signature_reads_values_not_objects(self) -> None:
        """The digest (a memo-less pickle) sees values: one string object used twice signs as
        two equal copies do, and every difference of value or type tells bodies apart."""
        base = dict(path="/v1/messages", query=b"", headers=[], identity="key-1")
        text = "same text " * 3
        shared = {
            "model": "m",
            "messages": [{"role": "user", "content": text}, {"role": "user", "content": text}],
        }
        copies = json.loads(json.dumps(shared))
        assert signature(shared, **base) == signature(copies, **base)  # type: ignore[arg-type]
        variants = [
            {"model": "m", "temperature": 1},
            {"model": "m", "temperature": 1.0},
            {"model": "m", "temperature": True},
            {"model": "m", "temperature": "1"},
            {"model": "m", "temperature": None},
            {"model": "m", "temperature": [1]},
            {"model": "m", "temperature": {"1": 1}},
            {"model": "m", "messages": [{"a": "b", "c": "d"}]},
            {"model": "m", "messages": [{"a": "bc", "": "d"}]},
        ]
        signed = {signature(v, **base) for v in variants}  # type: ignore[arg-type]
        assert len(signed) == len(variants)


# -- in memory, on the MockClock --------------------------------------------------------------

REQUEST = UpstreamRequest(
    path="/v1/messages", query=b"", headers=(), body=b"{}", payload={}, model="m", stream=True
)


async def test_stalled_listener_is_dropped_and_others_finish_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunks = anthropic_text_events([f"t{i}" for i in range(50)])

    async def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=PacedStream(chunks, gap=0.1)
        )  # type: ignore[arg-type]

    _, registry, router = mock_providers({"a": handler})
    flight = Flight(
        REQUEST,
        router.plan("m", registry.runtimes, now=0.0),
        registry.runtimes,
        SharePolicy(keep_history=True, max_lag_events=5, max_lag_s=2.0),
    )
    fast = flight.subscribe()
    stalled = flight.subscribe()
    got: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(flight.run)
        async for item in fast:
            if isinstance(item, bytes):
                got.append(item)
        finished_at = trio.current_time()
    assert b"".join(got) == b"".join(chunks)
    assert flight.was_dropped(stalled) and not flight.was_dropped(fast)
    # One 0.1 s gap per upstream event, plus at most one 2 s wait for the stalled listener.
    assert finished_at <= len(chunks) * 0.1 + 2.0 + 0.01
    items = []
    while True:
        try:
            items.append(stalled.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    assert 0 < len(items) <= 5 + 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 30), st.one_of(st.none(), st.integers(0, 30))), min_size=1, max_size=6)
)
def test_random_join_leave_schedules(schedule: list[tuple[int, int | None]]) -> None:
    """Listeners join after some events and may leave after more; each one that stays to the
    end gets the whole response exactly once, in order, whenever it joined."""
    chunks = anthropic_text_events([f"e{i}" for i in range(25)])
    wire = b"".join(chunks)

    async def main() -> None:
        async def handler(_r: httpx.Request) -> httpx.Response:
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=PacedStream(chunks, gap=1.0)
            )  # type: ignore[arg-type]

        _, registry, router = mock_providers({"a": handler})
        flight = Flight(
            REQUEST,
            router.plan("m", registry.runtimes, now=0.0),
            registry.runtimes,
            SharePolicy(keep_history=True, max_lag_events=1000, finish_orphans=True),
        )
        results: dict[int, bytes] = {}

        async def listener(i: int, join: int, leave: int | None) -> None:
            await trio.sleep(join + 0.5)
            recv = flight.subscribe()
            body = bytearray()
            heads = 0
            with trio.move_on_after(leave + 0.25) if leave is not None else trio.CancelScope():
                async for item in recv:
                    if isinstance(item, Head):
                        heads += 1
                    elif isinstance(item, bytes):
                        body += item
                results[i] = bytes(body)
                assert heads == 1
            flight.unsubscribe(recv)

        async with trio.open_nursery() as n:
            n.start_soon(flight.run)
            for i, (join, leave) in enumerate(schedule):
                n.start_soon(listener, i, join, leave)
        for i, (_join, leave) in enumerate(schedule):
            if i in results:
                assert results[i] == wire  # stayed to the end: everything, once, in order
            else:
                assert leave is not None  # only a listener that left early may miss the end

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
