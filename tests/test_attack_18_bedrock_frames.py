"""Attack 18: Bedrock event-stream frames with good CRCs and bad insides."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
from typing import Any

import pytest
import trio

from trio_balancer.protocol.bedrock import EVENT_STREAM_TYPE, EventStreamDecoder, EventStreamError

from .fakes import FakeUpstream, Reply, anthropic_text_events
from .helpers import NO_DEDUP, PROVIDER_KEY, BalancerFactory, message_body
from .test_cloud_protocol import crc_frame


def _str_header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v


CHUNK_HEADERS = _str_header(":message-type", "event") + _str_header(":event-type", "chunk")


def chunk_frame(inner: bytes) -> bytes:
    return crc_frame(CHUNK_HEADERS, json.dumps({"bytes": base64.b64encode(inner).decode()}).encode())


@pytest.mark.parametrize(
    "inner",
    [
        b'{"type":"\\ud800"}',  # fast path: a lone surrogate in the type
        b'{"x":1,"type":"\\udfff"}',  # slow path: the same
    ],
)
def test_a_chunk_whose_type_is_not_encodable_is_refused(inner: bytes) -> None:
    with contextlib.suppress(EventStreamError):
        EventStreamDecoder(1 << 20).feed(chunk_frame(inner))


def test_a_chunk_type_cannot_add_lines_to_the_relayed_sse() -> None:
    """A ``type`` holding a newline goes verbatim into the ``event:`` line."""
    inner = b'{"x":1,"type":"ping\\n\\nevent: message_stop\\ndata: {}"}'
    try:
        out = EventStreamDecoder(1 << 20).feed(chunk_frame(inner))
    except EventStreamError:
        return
    for e in out:
        assert e.raw.count(b"\n\n") == 1 and e.raw.endswith(b"\n\n"), e.raw
        assert b"\r" not in e.raw.split(b"\ndata: ")[0]


def test_a_chunk_with_a_type_prefix_and_garbage_after_is_refused() -> None:
    """The fast path takes the ``type`` from a regex and never parses the JSON."""
    try:
        out = EventStreamDecoder(1 << 20).feed(chunk_frame(b'{"type":"ping" not json at all'))
    except EventStreamError:
        return
    for e in out:
        json.loads(e.data or b"")


def _frames_of(events: list[bytes]) -> list[bytes]:
    out = []
    for raw in events:
        data = next(line[6:] for line in raw.split(b"\n") if line.startswith(b"data: "))
        out.append(chunk_frame(data))
    return out


async def test_a_surrogate_type_from_bedrock_before_commit_fails_over_not_500(
    nursery: trio.Nursery, balancer_for: BalancerFactory, aws_env: None
) -> None:
    bedrock = await FakeUpstream(
        Reply(headers=[("content-type", EVENT_STREAM_TYPE)], steps=[chunk_frame(b'{"x":1,"type":"\\ud800"}')])
    ).start(nursery)
    good = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    config: dict[str, Any] = {
        "providers": [
            {"name": "b", "kind": "bedrock", "region": "us-east-1", "base_url": bedrock.url},
            {"name": "p1", "kind": "anthropic", "base_url": good.url, "api_key": PROVIDER_KEY},
        ]
    }
    b = await balancer_for(config=config)
    async with b.client.stream("POST", "/v1/messages", json=message_body(stream=True), headers=NO_DEDUP) as r:
        body = await r.aread()
    assert len(bedrock.received) == 1
    assert r.status_code == 200 and b"message_stop" in body, (r.status_code, body)


async def test_an_injected_event_line_from_bedrock_does_not_reach_the_client(
    nursery: trio.Nursery, balancer_for: BalancerFactory, aws_env: None
) -> None:
    """A ``type`` with newlines in a chunk becomes extra SSE lines at the client: here a
    text delta the balancer never saw as one (its tracker saw a 'ping...' event)."""
    events = anthropic_text_events(["hello"])
    frames = _frames_of(events)
    injected = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "INJECTED"},
    }
    evil_type = "ping\n\nevent: content_block_delta\ndata: " + json.dumps(injected) + "\n\nevent: ping"
    evil = chunk_frame(json.dumps({"x": 1, "type": evil_type}).encode())
    frames.insert(3, evil)  # after message_start, content_block_start, first delta
    up = await FakeUpstream(
        Reply(headers=[("content-type", EVENT_STREAM_TYPE)], steps=[b"".join(frames)])
    ).start(nursery)
    b = await balancer_for(
        config={"providers": [{"name": "b", "kind": "bedrock", "region": "us-east-1", "base_url": up.url}]}
    )
    async with b.client.stream("POST", "/v1/messages", json=message_body(stream=True), headers=NO_DEDUP) as r:
        body = await r.aread()
    texts = []
    for block in body.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if len(data) == 1:
            parsed = json.loads(data[0])
            if parsed.get("type") == "content_block_delta":
                texts.append(parsed["delta"]["text"])
    # Refused (an event type is a name, never lines of its own): the client sees no injected delta.
    assert b"INJECTED" not in body, body
    assert texts in (["hello"], []), (texts, body)
