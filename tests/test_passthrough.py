"""Anthropic passthrough through a real Hypercorn: bytes, timing, headers, cancellation."""

from __future__ import annotations

import json
import random
from contextlib import aclosing

import httpx
import trio
from trio.testing import wait_all_tasks_blocked

from .fakes import CUT, HANG, FakeUpstream, Reply, anthropic_message, anthropic_text_events, interleave
from .helpers import CLIENT_KEY, PROVIDER_KEY, SONNET, Balancer, BalancerFactory, count_tasks, message_body

BODY = message_body(model=SONNET, stream=True)
HEADERS = {
    "x-api-key": CLIENT_KEY,
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "fine-grained-tool-streaming-2025-05-14",
}


async def collect(
    b: Balancer, body: dict | None = None, headers: dict | None = None
) -> tuple[httpx.Response, bytes, list[float]]:
    """POST and read the response as it streams: the body and each chunk's arrival time."""
    times: list[float] = []
    chunks: list[bytes] = []
    async with b.client.stream("POST", "/v1/messages", json=body or BODY, headers=headers or HEADERS) as r:
        async for chunk in r.aiter_raw():
            times.append(trio.current_time())
            chunks.append(chunk)
    return r, b"".join(chunks), times


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
        r, body, _ = await collect(balancer)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert body == wire

    async def test_events_arrive_spread_out_in_real_time(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """With 100 ms between upstream events the client sees them spread, not in one burst.

        The three events before the first content (message_start, an empty block start, ping)
        are held until the commit point, so they arrive together with the first delta; from
        there on every event arrives on its own, as the provider sent it.
        """
        events = anthropic_text_events([f"word{i} " for i in range(8)])
        upstream.script(Reply(steps=interleave(events, 0.1)))
        _r, body, times = await collect(balancer)
        assert body == b"".join(events)
        upstream_span = 0.1 * (len(events) - 1 - 3)  # from the first delta to message_stop
        assert len(times) >= len(events) - 3
        assert times[-1] - times[0] >= 0.8 * upstream_span

    async def test_each_event_forwarded_when_its_blank_line_arrives(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """An event split in two upstream chunks is held until complete, then sent at once."""
        events = anthropic_text_events(["abc", "def"])
        first, second = events[4][:10], events[4][10:]
        upstream.script(Reply(steps=[*events[:4], 0.05, first, 0.3, second, 0.05, *events[5:]]))
        seen: list[tuple[float, bytes]] = []
        async with balancer.client.stream("POST", "/v1/messages", json=BODY, headers=HEADERS) as r:
            async for chunk in r.aiter_raw():
                seen.append((trio.current_time(), chunk))
        # No chunk ever carries half an event, and the delta arrived together with its tail.
        for _, chunk in seen:
            assert chunk.endswith(b"\n\n")
        assert b"".join(c for _, c in seen) == b"".join(events)
        split_at = next(t for t, c in seen if b'"def"' in c)
        assert split_at - seen[0][0] >= 0.3

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
        _, body, _ = await collect(balancer)
        assert body == wire + b"\n"

    async def test_cut_after_commit_gives_sse_error(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        events = anthropic_text_events(["a", "b", "c"])
        upstream.script(Reply(steps=[*events[:4], CUT]))
        r, body, _ = await collect(balancer)
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
        r, _, _ = await collect(balancer)
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
        upstream.script(Reply(steps=interleave(events, 0.05)))
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
        with trio.move_on_after(0.3):
            await balancer.client.post("/v1/messages", json=BODY, headers=HEADERS)
        with trio.fail_after(2):
            await upstream.received[0].disconnected.wait()
        await balancer.wait_idle()
