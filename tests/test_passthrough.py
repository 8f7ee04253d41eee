"""Anthropic passthrough through a real Hypercorn: bytes, timing, headers, cancellation."""

from __future__ import annotations

import json
import random
from contextlib import aclosing
from functools import partial

import httpx
import trio
from trio.testing import wait_all_tasks_blocked

from .fakes import CUT, HANG, FakeUpstream, Pause, Reply, anthropic_message, anthropic_text_events, interleave
from .helpers import (
    CLIENT_KEY,
    PROVIDER_KEY,
    SONNET,
    Balancer,
    BalancerFactory,
    count_tasks,
    message_body,
    one_at_a_time,
    release_as_seen,
    wait_until,
)

BODY = message_body(model=SONNET, stream=True)
HEADERS = {
    "x-api-key": CLIENT_KEY,
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "fine-grained-tool-streaming-2025-05-14",
}


async def collect(
    b: Balancer, body: dict | None = None, headers: dict | None = None
) -> tuple[httpx.Response, bytes]:
    """POST and read the response as it streams, to its end."""
    async with b.client.stream("POST", "/v1/messages", json=body or BODY, headers=headers or HEADERS) as r:
        return r, await r.aread()


def mixed_text(rng: random.Random, n: int) -> list[str]:
    pieces = [
        "Hello",
        " world",
        "你好",
        "世界",
        "😀",
        "🚀✨",
        " ünïcödé",
        "こんにちは",
        "\n",
        " — ",
        '"quoted"',
        "\\",
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))) for _ in range(n)]


class TestStreaming:
    async def test_long_stream_is_byte_identical(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        """Thousands of events with CJK and emoji, in odd chunks, come out byte for byte."""
        rng = random.Random(7)
        events = anthropic_text_events(mixed_text(rng, 3000))
        wire = b"".join(events)
        # Chunk the wire at random places, including inside multi-byte characters.
        cuts = sorted(rng.sample(range(1, len(wire)), 2000))
        steps = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        upstream.script(Reply(steps=steps))
        r, body = await collect(balancer)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert body == wire

    async def test_events_arrive_spread_out_in_real_time(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """The client sees the events spread as the provider sent them, not in one burst.

        The three events before the first content (message_start, an empty block start, ping)
        are held until the commit point, so they arrive together with the first delta; from
        there on every event arrives on its own, as the provider sent it: the provider sends
        each one only once the client has the one before (a balancer that held events back
        would never be sent the next, and the test would time out).
        """
        events = anthropic_text_events([f"word{i} " for i in range(8)])
        steps, pauses = one_at_a_time(events, at_once=4)
        upstream.script(Reply(steps=steps))
        chunks: list[bytes] = []
        with trio.fail_after(10):
            async with balancer.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r:
                async for chunk in r.aiter_raw():
                    chunks.append(chunk)
                    release_as_seen(b"".join(chunks), pauses, at_once=4)
        assert b"".join(chunks) == b"".join(events)
        assert len(chunks) >= len(events) - 3

    async def test_each_event_forwarded_when_its_blank_line_arrives(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """An event split in two upstream chunks is held until complete, then sent at once."""
        events = anthropic_text_events(["abc", "def"])
        first, second = events[4][:10], events[4][10:]
        tail = Pause()
        upstream.script(Reply(steps=[*events[:4], first, tail, second, *events[5:]]))
        seen: list[tuple[bool, bytes]] = []  # (the tail had been sent, the chunk)

        async def read() -> None:
            async with balancer.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r:
                async for chunk in r.aiter_raw():
                    seen.append((tail.released.is_set(), chunk))

        async with trio.open_nursery() as n:
            n.start_soon(read)
            await tail.wait_reached()  # the provider has sent half of the "def" event, and waits
            await wait_until(lambda: bool(seen))  # the whole events before it came through
            await wait_all_tasks_blocked()  # the balancer has read the half and holds it
            tail.release()
        # No chunk ever carries half an event, and the delta arrived together with its tail.
        for _, chunk in seen:
            assert chunk.endswith(b"\n\n")
        assert b"".join(c for _, c in seen) == b"".join(events)
        split_released = next(released for released, c in seen if b'"def"' in c)
        assert split_released and not seen[0][0]

    async def test_non_stream_json_identical(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        payload = json.dumps(anthropic_message("Bonjour 你好 🙂")).encode()
        upstream.script(
            Reply(headers=[("content-type", "application/json")], steps=[payload[:7], payload[7:]])
        )
        r = await balancer.client.post("/v1/messages", json={**BODY, "stream": False}, headers=HEADERS)
        assert r.status_code == 200
        assert r.content == payload

    async def test_final_event_without_blank_line_is_ended(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        events = anthropic_text_events(["x"])
        wire = b"".join(events)[:-1]  # message_stop ends with one newline only
        upstream.script(Reply(steps=[wire]))
        _, body = await collect(balancer)
        assert body == wire + b"\n"

    async def test_cut_after_commit_gives_sse_error(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        events = anthropic_text_events(["a", "b", "c"])
        upstream.script(Reply(steps=[*events[:4], CUT]))
        r, body = await collect(balancer)
        assert r.status_code == 200
        assert body.startswith(b"".join(events[:4]))
        tail = body[len(b"".join(events[:4])) :]
        assert tail.startswith(b"event: error\ndata: ")
        err = json.loads(tail.split(b"data: ", 1)[1])
        assert err["type"] == "error" and err["error"]["type"] == "api_error"
        assert b"message_stop" not in body


class TestHeaders:
    async def test_provider_key_replaces_client_key(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        headers = {
            **HEADERS,
            "x-app": "cli",
            "user-agent": "claude-cli/2.0 (external, cli)",
            "connection": "keep-alive, x-hop",
            "x-hop": "1",
            "x-balancer-no-dedup": "1",
            "cookie": "a=b",
        }
        await collect(balancer, headers=headers)
        (req,) = upstream.received
        assert req.target == "/v1/messages"
        assert req.header("x-api-key") == PROVIDER_KEY
        assert CLIENT_KEY not in repr(req.headers)
        assert req.header("anthropic-version") == "2023-06-01"
        assert req.header("anthropic-beta") == HEADERS["anthropic-beta"]
        assert req.header("x-app") == "cli"
        assert req.header("user-agent") == "claude-cli/2.0 (external, cli)"
        assert req.header("accept-encoding") == "identity"
        for dropped in ("x-hop", "x-balancer-no-dedup", "cookie"):
            assert req.header(dropped) is None
        assert req.json() == BODY

    async def test_non_ascii_header_bytes_cross_unchanged(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """A latin-1 byte in a header value is legal HTTP; it once crashed the flight (fuzzing)."""
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        r = await balancer.client.post(
            "/v1/messages", json=BODY, headers={"x-note": "caf\xe9".encode("latin-1")}
        )
        assert r.status_code == 200
        assert upstream.received[0].header("x-note") == "caf\xe9"

    async def test_bearer_provider_and_query_string(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(upstream, auth="bearer")
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        async with b.client.stream(
            "POST", "/v1/messages?beta=true", json=BODY, headers={"authorization": f"Bearer {CLIENT_KEY}"}
        ) as r:
            await r.aread()
        (req,) = upstream.received
        assert req.target == "/v1/messages?beta=true"
        assert req.header("authorization") == f"Bearer {PROVIDER_KEY}"
        assert req.header("x-api-key") is None

    async def test_passthrough_forwards_client_credentials(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(
            config={
                "providers": [
                    {"name": "a", "kind": "anthropic", "base_url": upstream.url, "api_key": "passthrough"}
                ]
            }
        )
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        async with b.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r:
            await r.aread()
        assert upstream.received[0].header("x-api-key") == CLIENT_KEY

    async def test_response_headers_relayed_without_hop_by_hop(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(
            Reply(
                headers=[
                    ("content-type", "text/event-stream"),
                    ("request-id", "req_123"),
                    ("anthropic-ratelimit-requests-remaining", "99"),
                    ("server", "fake"),
                    ("keep-alive", "timeout=5"),
                ],
                steps=anthropic_text_events(["ok"]),
            )
        )
        r, _ = await collect(balancer)
        assert r.headers["request-id"] == "req_123"
        assert r.headers["anthropic-ratelimit-requests-remaining"] == "99"
        assert r.headers.get("server") != "fake"
        assert "keep-alive" not in r.headers

    async def test_model_rename_rewrites_only_model(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        config = {
            "providers": [
                {"name": "a", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}
            ],
            "routes": [{"match": "claude-*", "targets": [{"provider": "a", "model": "glm-4.6"}]}],
        }
        b = await balancer_for(config=config)
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        async with b.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r:
            await r.aread()
        assert upstream.received[0].json() == {**BODY, "model": "glm-4.6"}


class TestCancellation:
    async def test_client_disconnect_closes_upstream(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        events = anthropic_text_events([f"t{i}" for i in range(50)])
        # Streaming when the client leaves, and never to the end: only the balancer can end it.
        upstream.script(Reply(steps=[*interleave(events[:-1], 0.05), HANG]))
        await wait_all_tasks_blocked()
        baseline = count_tasks()
        async with (
            balancer.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r,
            aclosing(r.aiter_raw()) as it,
        ):
            async for chunk in it:
                if b"content_block_delta" in chunk:
                    break
        # Leaving the block closed our socket; the balancer must drop its upstream request.
        (req,) = upstream.received
        with trio.fail_after(2):
            await req.disconnected.wait()
        assert not req.finished.is_set()
        await balancer.wait_idle()
        await upstream.wait_no_connections()
        await wait_all_tasks_blocked(cushion=0.05)
        assert count_tasks() == baseline

    async def test_disconnect_while_upstream_silent(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        """No upstream event is needed to notice the client left: the watcher cancels."""
        events = anthropic_text_events(["a"])
        upstream.script(Reply(steps=[*events[:4], HANG]))
        async with (
            balancer.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r,
            aclosing(r.aiter_raw()) as it,
        ):
            async for _ in it:
                break
        with trio.fail_after(2):
            await upstream.received[0].disconnected.wait()
        await balancer.wait_idle()

    async def test_disconnect_before_response_headers(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(Reply(hang_before_headers=True))
        async with trio.open_nursery() as n:
            n.start_soon(partial(balancer.client.post, "/v1/messages", json=BODY, headers=HEADERS))
            await upstream.wait_received(1)
            n.cancel_scope.cancel()  # the client gives up while the provider is silent
        with trio.fail_after(2):
            await upstream.received[0].disconnected.wait()
        await balancer.wait_idle()
