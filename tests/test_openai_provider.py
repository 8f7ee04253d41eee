"""An OpenAI-compatible provider behind the balancer, seen through the official anthropic SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
import trio

from trio_balancer.flight import relay

from .fakes import (
    CUT,
    SSE_HEADERS,
    FakeUpstream,
    Reply,
    anthropic_text_events,
    oai_chunk,
    openai_text_stream,
    openai_tool_stream,
)
from .helpers import CLIENT_KEY, PROVIDER_KEY, Balancer, BalancerFactory

TOOLS: list[Any] = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    }
]


def openai_config(*upstreams: FakeUpstream, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    kinds = kinds or ("openai",) * len(upstreams)
    return {
        "providers": [
            {
                "name": f"p{i}",
                "kind": k,
                "base_url": u.url + ("/v1" if k == "openai" else ""),
                "api_key": PROVIDER_KEY,
            }
            for i, (u, k) in enumerate(zip(upstreams, kinds, strict=True))
        ]
    }


@pytest.fixture
async def oa(upstream: FakeUpstream, balancer_for: BalancerFactory) -> Balancer:
    return await balancer_for(config=openai_config(upstream))


def sdk(b: Balancer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=b.url, api_key=CLIENT_KEY, max_retries=0)


async def test_sdk_streams_a_tool_use_answer(upstream: FakeUpstream, oa: Balancer) -> None:
    args = json.dumps({"path": "src/主.py"})
    upstream.script(
        Reply(headers=SSE_HEADERS, steps=openai_tool_stream("read_file", args, text="I'll read it."))
    )
    async with (
        sdk(oa) as client,
        client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=256,
            tools=TOOLS,
            messages=[{"role": "user", "content": "open src/主.py"}],
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.name == "read_file" and tool.input == {"path": "src/主.py"}
    assert final.stop_reason == "tool_use"
    assert final.usage.input_tokens == 50 and final.usage.output_tokens == 20

    (req,) = upstream.received
    assert req.target == "/v1/chat/completions"
    assert req.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert req.header("x-api-key") is None and req.header("anthropic-version") is None
    assert CLIENT_KEY not in repr(req.headers)
    sent = req.json()
    assert sent["model"] == "claude-sonnet-4-6" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["tools"][0]["function"]["name"] == "read_file"


async def test_tool_round_trip_request_shape(upstream: FakeUpstream, oa: Balancer) -> None:
    answer = {
        "id": "c2",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "The file says hi."},
            }
        ],
    }
    upstream.script(
        Reply(headers=[("content-type", "application/json")], steps=[json.dumps(answer).encode()])
    )
    messages: list[Any] = [
        {"role": "user", "content": "read a"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_abc", "name": "read_file", "input": {"path": "a"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_abc", "content": "hi"}]},
    ]
    async with sdk(oa) as client:
        msg = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, tools=TOOLS, messages=messages, stream=False
        )
    sent = upstream.received[0].json()
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_abc", "content": "hi"}
    assert msg.content[0].type == "text" and msg.content[0].text == "The file says hi."


async def test_non_stream_json_converted(upstream: FakeUpstream, oa: Balancer) -> None:
    body = {
        "id": "c1",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Bonjour"}}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    upstream.script(
        Reply(
            headers=[("content-type", "application/json"), ("x-request-id", "req_9")],
            steps=[json.dumps(body).encode()],
        )
    )
    async with sdk(oa) as client:
        msg = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert msg.content[0].type == "text" and msg.content[0].text == "Bonjour"
    assert msg.usage.input_tokens == 3 and msg.usage.output_tokens == 2
    assert msg.model == "claude-sonnet-4-6"


async def test_missing_usage_chunk_ends_well_formed(upstream: FakeUpstream, oa: Balancer) -> None:
    upstream.script(
        Reply(headers=SSE_HEADERS, steps=openai_text_stream(["no ", "usage ", "here"], usage=None))
    )
    async with (
        sdk(oa) as client,
        client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        ) as s,
    ):
        final = await s.get_final_message()
    assert final.content[0].text == "no usage here"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


async def test_openai_error_relayed_in_anthropic_shape(upstream: FakeUpstream, oa: Balancer) -> None:
    upstream.script(
        Reply(
            status=400,
            headers=[("content-type", "application/json")],
            steps=[
                b'{"error": {"message": "maximum context length is 8192", "code": "context_length_exceeded"}}'
            ],
        )
    )
    async with sdk(oa) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    assert "maximum context length" in str(info.value)


async def test_openai_failure_fails_over_to_anthropic(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    oa_up = await FakeUpstream(
        Reply(
            status=429,
            headers=[("content-type", "application/json")],
            steps=[b'{"error": {"message": "slow down"}}'],
        )
    ).start(nursery)
    an_up = await FakeUpstream(Reply(steps=anthropic_text_events(["from anthropic"]))).start(nursery)
    b = await balancer_for(config=openai_config(oa_up, an_up, kinds=("openai", "anthropic")))
    async with b.client.stream(
        "POST",
        "/v1/messages",
        json={
            "model": "claude-sonnet-4-6",
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
    ) as r:
        body = await r.aread()
    assert body == b"".join(anthropic_text_events(["from anthropic"]))


async def test_error_mid_stream_after_commit(upstream: FakeUpstream, oa: Balancer) -> None:
    upstream.script(Reply(headers=SSE_HEADERS, steps=[*openai_text_stream(["partial"])[:2], CUT]))
    async with oa.client.stream(
        "POST",
        "/v1/messages",
        json={"model": "m", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        body = await r.aread()
    assert b"partial" in body and body.count(b"event: error") == 1 and b"message_stop" not in body


async def test_count_tokens_is_estimated_locally(upstream: FakeUpstream, oa: Balancer) -> None:
    async with sdk(oa) as client:
        result = await client.messages.count_tokens(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello world " * 50}]
        )
    assert 80 < result.input_tokens < 200
    assert upstream.received == []


async def test_pings_during_long_silence(
    upstream: FakeUpstream, oa: Balancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "PING_INTERVAL_S", 0.1)
    upstream.script(
        Reply(
            headers=SSE_HEADERS,
            steps=[
                oai_chunk({"content": "thinking..."}),
                0.45,
                oai_chunk({"content": " done"}),
                oai_chunk({}, "stop"),
                b"data: [DONE]\n\n",
            ],
        )
    )
    async with oa.client.stream(
        "POST",
        "/v1/messages",
        json={"model": "m", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        body = await r.aread()
    assert body.count(b"event: ping") >= 2
    assert body.index(b"event: ping") < body.index(b" done")
    assert body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
