"""Anthropic <-> OpenAI conversion: golden mappings, streaming state machine, random splits,
and every converted event validated against the official SDK's own event types."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.protocol.convert import (
    ConversionError,
    RequestOptions,
    StreamConverter,
    UpstreamStreamError,
    openai_error_to_anthropic,
    to_anthropic_message,
    to_openai,
)
from trio_balancer.protocol.convert.request import user_digest
from trio_balancer.protocol.sse import SSEDecoder, SSEEvent

from .fakes import OAI_DONE, oai, oai_chunk, openai_text_stream, openai_tool_stream

EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


# -- requests ---------------------------------------------------------------------------------


class TestRequest:
    def test_full_mapping(self) -> None:
        payload = {
            "model": "claude-sonnet-4-6",
            "system": [
                {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be kind."},
            ],
            "max_tokens": 1000,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "user_1"},
            "stream": True,
            "tools": [
                {
                    "name": "read_file",
                    "description": "Read a file",
                    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
                }
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "read a.txt"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Reading."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "read_file",
                            "input": {"path": "a.txt"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "read_file",
                            "input": {"path": "b.txt"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "no such file"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ],
        }
        c = to_openai(payload, model="gpt-4.1")
        assert c.body == {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "You are terse.\n\nBe kind."},
                {"role": "user", "content": "read a.txt"},
                {
                    "role": "assistant",
                    "content": "Reading.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "b.txt"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "hello"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such file"},
                {"role": "user", "content": "thanks"},
            ],
            "max_tokens": 1000,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": ["END"],
            "user": user_digest("user_1"),  # a stable digest: OpenAI takes 64 characters at most
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "read_file",
                        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
                        "description": "Read a file",
                    },
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
        assert "top_k" in c.dropped and "messages[1].content.thinking" in c.dropped

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ({"type": "auto"}, "auto"),
            ({"type": "any"}, "required"),
            ({"type": "none"}, "none"),
            ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        ],
    )
    def test_tool_choice(self, choice: dict[str, Any], expected: Any) -> None:
        tools = [{"name": "f", "input_schema": {"type": "object"}}]
        body = to_openai({"messages": [], "tools": tools, "tool_choice": choice}, model="m").body
        assert body["tool_choice"] == expected

    def test_images_base64_and_url(self) -> None:
        content = [
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ]
        body = to_openai({"messages": [{"role": "user", "content": content}]}, model="m").body
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        ]

    def test_tool_result_images_follow_as_user_content(self) -> None:
        content = [
            {
                "type": "tool_result",
                "tool_use_id": "t",
                "content": [
                    {"type": "text", "text": "screenshot:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": "abc"},
                    },
                ],
            }
        ]
        msgs = to_openai({"messages": [{"role": "user", "content": content}]}, model="m").body["messages"]
        assert msgs[0] == {"role": "tool", "tool_call_id": "t", "content": "screenshot:"}
        assert msgs[1] == {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,abc"}}],
        }

    @pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (8000, "medium"), (32000, "high")])
    def test_thinking_to_reasoning_effort(self, budget: int, effort: str) -> None:
        payload = {"messages": [], "thinking": {"type": "enabled", "budget_tokens": budget}}
        assert (
            to_openai(payload, model="o4", options=RequestOptions(reasoning_effort=True)).body[
                "reasoning_effort"
            ]
            == effort
        )
        plain = to_openai(payload, model="m")
        assert "reasoning_effort" not in plain.body and "thinking" in plain.dropped

    def test_max_completion_tokens_field(self) -> None:
        body = to_openai(
            {"messages": [], "max_tokens": 5},
            model="m",
            options=RequestOptions(max_tokens_field="max_completion_tokens"),
        ).body
        assert body["max_completion_tokens"] == 5 and "max_tokens" not in body

    def test_server_tools_dropped_not_corrupted(self) -> None:
        c = to_openai(
            {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, model="m"
        )
        assert "tools" not in c.body and "tools.web_search_20250305" in c.dropped

    def test_assistant_tool_only_message_has_null_content(self) -> None:
        msgs = to_openai(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            model="m",
        ).body["messages"]
        assert msgs[0]["content"] is None and msgs[0]["tool_calls"][0]["function"]["arguments"] == "{}"

    def test_not_streaming_has_no_stream_options(self) -> None:
        body = to_openai({"messages": [], "stream": False}, model="m").body
        assert "stream" not in body and "stream_options" not in body


# -- streams ----------------------------------------------------------------------------------


def convert(
    wire: bytes, chunks: list[bytes] | None = None, model: str = "claude-sonnet-4-6"
) -> tuple[list[SSEEvent], StreamConverter]:
    decoder, conv = SSEDecoder(), StreamConverter(model=model)
    out: list[SSEEvent] = []
    for chunk in chunks if chunks is not None else [wire]:
        for event in decoder.feed(chunk):
            out.extend(conv.feed(event))
    tail = decoder.close()
    if tail is not None:
        out.extend(conv.feed(tail))
    out.extend(conv.close())
    return out, conv


def payloads(events: list[SSEEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data or b"") for e in events]


def accumulate(events: list[SSEEvent]) -> Message:
    """What the official SDK makes of our events: validate each, then accumulate."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for e in events:
        parsed = EVENT.validate_python(json.loads(e.data or b""))
        assert parsed.type == e.event
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return snapshot  # type: ignore[return-value]


class TestStream:
    def test_text_stream(self) -> None:
        events, conv = convert(b"".join(openai_text_stream(["Hel", "lo ", "世界"])))
        assert [e.event for e in events] == [
            "message_start", "content_block_start", "content_block_delta", "content_block_delta",
            "content_block_delta", "content_block_stop", "message_delta", "message_stop",
        ]  # fmt: skip
        msg = accumulate(events)
        assert msg.model == "claude-sonnet-4-6" and msg.id == "msg_chatcmpl-1"
        assert msg.content[0].text == "Hello 世界"  # type: ignore[union-attr]
        assert msg.stop_reason == "end_turn"
        assert msg.usage.output_tokens == 9
        assert msg.usage.input_tokens == 20 and msg.usage.cache_read_input_tokens == 100
        assert conv.usage_reported

    def test_each_delta_is_emitted_as_its_chunk_arrives(self) -> None:
        decoder, conv = SSEDecoder(), StreamConverter(model="m")
        chunks = openai_text_stream(["a", "b"])
        first = [e.event for ev in decoder.feed(chunks[0] + chunks[1]) for e in conv.feed(ev)]
        assert first == ["message_start", "content_block_start", "content_block_delta"]
        assert [e.event for ev in decoder.feed(chunks[2]) for e in conv.feed(ev)] == ["content_block_delta"]

    def test_tool_use_with_split_arguments(self) -> None:
        args = json.dumps({"path": "notes/今日.md", "limit": 20})
        events, _ = convert(b"".join(openai_tool_stream("read_file", args, text="Let me look.", pieces=7)))
        msg = accumulate(events)
        assert [b.type for b in msg.content] == ["text", "tool_use"]
        tool = msg.content[1]
        assert tool.name == "read_file" and tool.id == "call_abc"  # type: ignore[union-attr]
        assert tool.input == {"path": "notes/今日.md", "limit": 20}  # type: ignore[union-attr]
        assert msg.stop_reason == "tool_use"
        assert msg.usage.input_tokens == 50 and msg.usage.output_tokens == 20

    def test_interleaved_tool_calls(self) -> None:
        chunks = [
            oai_chunk({"role": "assistant"}),
            oai_chunk(
                {"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "a", "arguments": '{"x"'}}]}
            ),
            oai_chunk(
                {"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "b", "arguments": '{"y"'}}]}
            ),
            oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            oai_chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]}),
            oai_chunk({}, "tool_calls"),
            OAI_DONE,
        ]
        msg = accumulate(convert(b"".join(chunks))[0])
        assert [(b.name, b.input) for b in msg.content] == [("a", {"x": 1}), ("b", {"y": 2})]  # type: ignore[union-attr]

    def test_name_arriving_after_arguments(self) -> None:
        chunks = [
            oai_chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"arguments": '{"q": '}}]}),
            oai_chunk({"tool_calls": [{"index": 0, "function": {"name": "search", "arguments": '"x"}'}}]}),
            oai_chunk({}, "tool_calls"),
            OAI_DONE,
        ]
        msg = accumulate(convert(b"".join(chunks))[0])
        assert msg.content[0].input == {"q": "x"}  # type: ignore[union-attr]

    def test_reasoning_becomes_thinking_block(self) -> None:
        chunks = [
            oai_chunk({"role": "assistant", "reasoning_content": "Let me think"}),
            oai_chunk({"reasoning_content": " harder."}),
            oai_chunk({"content": "42"}),
            oai_chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
            OAI_DONE,
        ]
        msg = accumulate(convert(b"".join(chunks))[0])
        assert [b.type for b in msg.content] == ["thinking", "text"]
        assert msg.content[0].thinking == "Let me think harder."  # type: ignore[union-attr]

    def test_missing_usage_chunk_still_well_formed(self) -> None:
        events, conv = convert(b"".join(openai_text_stream(["some words here"], usage=None)))
        msg = accumulate(events)
        assert msg.stop_reason == "end_turn"
        assert msg.usage.output_tokens > 0  # estimated from the text, never a silent zero
        assert not conv.usage_reported

    def test_no_done_but_finished(self) -> None:
        events, _ = convert(b"".join(openai_text_stream(["x"], done=False)))
        assert events[-1].event == "message_stop"

    def test_ends_without_finish_reason_is_an_error(self) -> None:
        wire = b"".join(openai_text_stream(["x"], usage=None, done=False)[:-1])
        with pytest.raises(ConversionError, match="finish_reason"):
            convert(wire)

    def test_done_without_finish_reason_ends_normally(self) -> None:
        events, _ = convert(oai_chunk({"content": "hi"}) + OAI_DONE)
        assert accumulate(events).stop_reason == "end_turn"

    @pytest.mark.parametrize(
        ("finish", "reason"),
        [("length", "max_tokens"), ("content_filter", "refusal"), ("function_call", "tool_use")],
    )
    def test_stop_reasons(self, finish: str, reason: str) -> None:
        events, _ = convert(oai_chunk({"content": "x"}) + oai_chunk({}, finish) + OAI_DONE)
        assert payloads(events)[-2]["delta"]["stop_reason"] == reason

    def test_stop_after_tools_means_tool_use(self) -> None:
        chunks = [
            oai_chunk(
                {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}
            ),
            oai_chunk({}, "stop"),
            OAI_DONE,
        ]
        assert accumulate(convert(b"".join(chunks))[0]).stop_reason == "tool_use"

    def test_error_in_stream(self) -> None:
        with pytest.raises(UpstreamStreamError) as info:
            convert(
                oai(
                    {
                        "error": {
                            "message": "Rate limit reached",
                            "type": "requests",
                            "code": "rate_limit_exceeded",
                        }
                    }
                )
            )
        assert info.value.error_type == "rate_limit_error"

    def test_malformed_chunk(self) -> None:
        with pytest.raises(ConversionError):
            convert(b'data: {"choices": [\n\n')

    def test_nameless_tool_call_is_an_error(self) -> None:
        with pytest.raises(ConversionError, match="without a function name"):
            convert(
                oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
                + oai_chunk({}, "tool_calls")
                + OAI_DONE
            )


STREAMS = [
    b"".join(openai_text_stream(["Hello", " wörld ", "你好", "🙂", "\n\n", "end"])),
    b"".join(
        openai_tool_stream("edit", json.dumps({"file": "a.py", "new": "print('é')\n" * 3}), text="Editing")
    ),
    b"".join(openai_text_stream(["no usage"], usage=None)),
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(STREAMS), st.lists(st.integers(min_value=1), max_size=30))
def test_random_splits_give_the_same_anthropic_events(wire: bytes, cuts: list[int]) -> None:
    points = sorted({c % len(wire) for c in cuts} - {0})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    whole = [(e.event, e.data) for e in convert(wire)[0]]
    split = [(e.event, e.data) for e in convert(wire, chunks)[0]]
    assert split == whole


# -- non-stream and errors ---------------------------------------------------------------------


class TestResponse:
    def test_text_and_tools(self) -> None:
        body = {
            "id": "chatcmpl-9",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": "Sure.",
                        "reasoning_content": "think",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a": [1, 2]}'},
                            }
                        ],
                    },
                }
            ],
            "usage": {
                "prompt_tokens": 30,
                "completion_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 10},
            },
        }
        msg = to_anthropic_message(body, model="claude-sonnet-4-6")
        Message.model_validate(msg)
        assert msg["content"] == [
            {"type": "thinking", "thinking": "think", "signature": ""},
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": [1, 2]}},
        ]
        assert msg["stop_reason"] == "tool_use"
        assert msg["usage"] == {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 10}

    def test_no_choices(self) -> None:
        with pytest.raises(ConversionError):
            to_anthropic_message({"choices": []}, model="m")

    def test_bad_arguments(self) -> None:
        body = {
            "choices": [
                {"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}}
            ]
        }
        with pytest.raises(ConversionError, match="not JSON"):
            to_anthropic_message(body, model="m")


@pytest.mark.parametrize(
    ("status", "body", "error_type", "fragment"),
    [
        (
            400,
            b'{"error": {"message": "context too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}',
            "invalid_request_error",
            "context too long (context_length_exceeded)",
        ),
        (401, b'{"error": {"message": "Incorrect API key"}}', "authentication_error", "Incorrect API key"),
        (
            429,
            b'{"error": {"message": "quota", "code": "insufficient_quota"}}',
            "rate_limit_error",
            "insufficient_quota",
        ),
        (503, b"Service Unavailable", "api_error", "19 bytes that are not JSON"),  # not our words to relay
        (500, b'{"message": "boom"}', "api_error", "boom"),
    ],
)
def test_openai_errors(status: int, body: bytes, error_type: str, fragment: str) -> None:
    got_type, out = openai_error_to_anthropic(status, body, "oa")
    parsed = json.loads(out)
    assert got_type == error_type == parsed["error"]["type"]
    assert fragment in parsed["error"]["message"] and "'oa'" in parsed["error"]["message"]
