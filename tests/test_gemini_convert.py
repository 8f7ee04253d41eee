"""Anthropic <-> Gemini conversion: request mapping, stream fixtures written from Google's
documented ``streamGenerateContent?alt=sse`` format, random splits, and the signature round trip."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.protocol.convert import (
    ConversionError,
    GeminiStreamConverter,
    UpstreamStreamError,
    gemini_count_answer,
    gemini_to_anthropic_message,
    to_gemini,
)
from trio_balancer.protocol.convert.gemini_request import SKIP_SIGNATURE
from trio_balancer.protocol.gemini import gemini_signature
from trio_balancer.protocol.google_errors import google_error, google_error_type
from trio_balancer.protocol.sse import SSEDecoder, SSEEvent
from trio_balancer.protocol.thinking import MINTED_PREFIX

DATA = Path(__file__).parent / "data" / "gemini"
EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def convert(raw: bytes, *, splits: list[int] | None = None, message_id: str = "msg_1") -> list[SSEEvent]:
    """Decode ``raw`` (cut at ``splits``) and convert every event; then close."""
    decoder, conv = SSEDecoder(), GeminiStreamConverter(model="claude-sonnet-4-6", message_id=message_id)
    out: list[SSEEvent] = []
    cuts = [0, *sorted(set(splits or [])), len(raw)]
    for a, b in itertools.pairwise(cuts):
        for event in decoder.feed(raw[a:b]):
            out.extend(conv.feed(event))
    last = decoder.close()
    if last is not None:
        out.extend(conv.feed(last))
    out.extend(conv.close())
    return out


def summary(events: list[SSEEvent]) -> list[tuple[Any, ...]]:
    """Each event in a line of a test: what it says, not how it is spelled."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        p = json.loads(e.data or b"")
        assert p["type"] == e.event
        kind = p["type"]
        if kind == "message_start":
            out.append(("message_start", p["message"]["usage"]))
        elif kind == "content_block_start":
            block = p["content_block"]
            extra = (block["id"], block["name"]) if block["type"] == "tool_use" else ()
            out.append(("start", p["index"], block["type"], *extra))
        elif kind == "content_block_delta":
            d = p["delta"]
            key = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}
            name = key.get(d["type"], "partial_json")
            out.append((name.split("_")[0], p["index"], d[name]))
        elif kind == "content_block_stop":
            out.append(("stop", p["index"]))
        elif kind == "message_delta":
            out.append(("end", p["delta"]["stop_reason"], p["usage"]))
        else:
            out.append((kind,))
    return out


def tool_ids(events: list[SSEEvent]) -> list[str]:
    return [s[3] for s in summary(events) if s[0] == "start" and s[2] == "tool_use"]


def accumulate(events: list[SSEEvent]) -> Message:
    """What the official SDK makes of our events: validate each, then accumulate."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for e in events:
        parsed = EVENT.validate_python(json.loads(e.data or b""))
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return snapshot


# -- requests -----------------------------------------------------------------------------------


class TestRequest:
    def test_system_string_blocks_and_in_place_messages(self) -> None:
        """system (string or text blocks) and role-system messages all go to systemInstruction."""
        body = to_gemini(
            {
                "system": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Be kind."}],
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "system", "content": [{"type": "text", "text": "Reminder."}]},
                ],
            }
        ).body
        assert body["systemInstruction"] == {
            "parts": [{"text": "Be terse."}, {"text": "Be kind."}, {"text": "Reminder."}]
        }
        assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
        assert to_gemini({"system": "S", "messages": []}).body["systemInstruction"] == {
            "parts": [{"text": "S"}]
        }

    def test_roles_and_merging(self) -> None:
        """assistant becomes model; consecutive contents of one role are one content."""
        body = to_gemini(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "b"}, {"type": "text", "text": ""}],
                    },
                    {"role": "assistant", "content": "c"},
                    {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
                ]
            }
        ).body
        assert body["contents"] == [
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
            {"role": "model", "parts": [{"text": "c"}, {"text": "d"}]},
        ]

    def test_images_and_documents(self) -> None:
        content = [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}},
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            },
            {
                "type": "document",
                "title": "Notes",
                "source": {"type": "text", "media_type": "text/plain", "data": "n"},
            },
            {"type": "document", "source": {"type": "file", "file_id": "file_1"}},
        ]
        req = to_gemini({"messages": [{"role": "user", "content": content}]})
        assert req.body["contents"][0]["parts"] == [
            {"inlineData": {"mimeType": "image/jpeg", "data": "AAA"}},
            {"fileData": {"fileUri": "https://x.test/cat.png", "mimeType": "image/png"}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
            {"text": "Document: Notes\nn"},
        ]
        assert req.dropped == ("messages[0].content.document.source.file",)

    def test_tool_use_and_result(self) -> None:
        """A result names the call it answers; is_error is an error response; results in a user content."""
        req = to_gemini(
            {
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "t1",
                                "name": "get_weather",
                                "input": {"city": "Paris"},
                            },
                            {"type": "tool_use", "id": "t2", "name": "get_time", "input": {}},
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "also this"},
                            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                            {
                                "type": "tool_result",
                                "tool_use_id": "t2",
                                "is_error": True,
                                "content": [{"type": "text", "text": "no clock"}],
                            },
                        ],
                    },
                ]
            }
        )
        model, results = req.body["contents"][1:]
        assert model == {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"id": "t1", "name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SKIP_SIGNATURE,
                },
                {"functionCall": {"id": "t2", "name": "get_time", "args": {}}},
            ],
        }
        assert results == {
            "role": "user",
            "parts": [
                {"functionResponse": {"id": "t1", "name": "get_weather", "response": {"content": "sunny"}}},
                {"functionResponse": {"id": "t2", "name": "get_time", "response": {"error": "no clock"}}},
                {"text": "also this"},
            ],
        }
        assert req.dropped == ()

    def test_tool_result_images_go_beside_the_response(self) -> None:
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "P"}}
        req = to_gemini(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "s", "name": "shot", "input": {}}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "s", "content": [image]}],
                    },
                ]
            }
        )
        assert req.body["contents"][1]["parts"] == [
            {"functionResponse": {"id": "s", "name": "shot", "response": {"content": ""}}},
            {"inlineData": {"mimeType": "image/png", "data": "P"}},
        ]

    def test_tool_result_without_its_call(self) -> None:
        req = to_gemini(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "r"}]}
                ]
            }
        )
        assert req.body["contents"][0]["parts"][0]["functionResponse"]["name"] == "unknown_tool"
        assert req.dropped == ("tool_result.name",)

    def test_our_signature_goes_back_on_the_next_part(self) -> None:
        """A tbx1.g. signature is put back on the part after its thinking block; others are dropped."""
        req = to_gemini(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "hm", "signature": gemini_signature("S1")},
                            {"type": "text", "text": "Let me look."},
                            {"type": "thinking", "thinking": "", "signature": gemini_signature("S2")},
                            {"type": "tool_use", "id": "c1", "name": "Read", "input": {"p": 1}},
                            {"type": "thinking", "thinking": "x", "signature": "EqQBanthropic"},
                            {"type": "redacted_thinking", "data": "abc"},
                            {"type": "thinking", "thinking": "y", "signature": MINTED_PREFIX + "openai"},
                        ],
                    }
                ]
            }
        )
        assert req.body["contents"][0]["parts"] == [
            {"text": "Let me look.", "thoughtSignature": "S1"},
            {"functionCall": {"id": "c1", "name": "Read", "args": {"p": 1}}, "thoughtSignature": "S2"},
        ]
        assert req.dropped == (
            "messages[0].content.thinking",
            "messages[0].content.redacted_thinking",
            "messages[0].content.thinking",
        )

    def test_a_trailing_signature_goes_on_the_part_it_followed(self) -> None:
        """Gemini signs a text answer on its last, empty part: back on the text."""
        req = to_gemini(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": "4."},
                            {"type": "thinking", "thinking": "", "signature": gemini_signature("T")},
                        ],
                    }
                ]
            }
        )
        assert req.body["contents"][0]["parts"] == [{"text": "4.", "thoughtSignature": "T"}]

    def test_tools_and_tool_choice(self) -> None:
        tools = [
            {"name": "get_weather", "description": "Weather", "input_schema": {**WEATHER, "$schema": "x"}},
            {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
            {"type": "web_search_20250305", "name": "web_search"},
            {"type": "tool_search_tool_regex_20251119", "name": "tool_search"},
        ]
        expected_tools = [
            {
                "functionDeclarations": [
                    {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
                    {"name": "noargs"},
                ]
            }
        ]
        modes = {
            "auto": {"mode": "AUTO"},
            "any": {"mode": "ANY"},
            "none": {"mode": "NONE"},
            "tool": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        }
        for kind, config in modes.items():
            choice = {"type": kind, "name": "get_weather"} if kind == "tool" else {"type": kind}
            req = to_gemini({"messages": [], "tools": tools, "tool_choice": choice})
            assert req.body["tools"] == expected_tools
            assert req.body["toolConfig"] == {"functionCallingConfig": config}
            assert req.dropped == ("tools.web_search_20250305", "tools.tool_search_tool_regex_20251119")

    def test_generation_config_and_thinking(self) -> None:
        base = {
            "messages": [],
            "max_tokens": 1000,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
        }
        config = {
            "maxOutputTokens": 1000,
            "temperature": 0.5,
            "topP": 0.9,
            "topK": 40,
            "stopSequences": ["END"],
        }
        assert to_gemini(base).body["generationConfig"] == config
        enabled = to_gemini({**base, "thinking": {"type": "enabled", "budget_tokens": 2048}}).body
        assert enabled["generationConfig"]["thinkingConfig"] == {
            "thinkingBudget": 2048,
            "includeThoughts": True,
        }
        adaptive = to_gemini({**base, "thinking": {"type": "adaptive"}}).body
        assert adaptive["generationConfig"]["thinkingConfig"] == {
            "thinkingBudget": -1,
            "includeThoughts": True,
        }
        disabled = to_gemini({**base, "thinking": {"type": "disabled"}}).body
        assert disabled["generationConfig"] == config

    def test_unmapped_fields_are_dropped_and_listed(self) -> None:
        req = to_gemini(
            {
                "model": "claude-sonnet-4-6",
                "stream": True,
                "metadata": {"user_id": "u"},
                "context_management": {"edits": []},
                "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": "hi"}],
            }
        )
        assert set(req.body) == {"contents", "systemInstruction"}
        assert req.dropped == ("metadata", "context_management", "cache_control")

    def test_payload_is_not_changed(self) -> None:
        payload = {
            "tools": [{"name": "t", "input_schema": {**WEATHER, "additionalProperties": False}}],
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {}}]}
            ],
        }
        before = json.dumps(payload)
        to_gemini(payload)
        assert json.dumps(payload) == before


# -- streams ------------------------------------------------------------------------------------

END_USAGE = {"input_tokens": 9, "output_tokens": 3}


class TestStream:
    def test_text(self) -> None:
        events = convert(fixture("text.sse"))
        assert summary(events) == [
            ("message_start", {"input_tokens": 9, "output_tokens": 0}),
            ("start", 0, "text"),
            ("text", 0, "Hello"),
            ("text", 0, " wörld"),
            ("stop", 0),
            ("end", "end_turn", END_USAGE),
            ("message_stop",),
        ]
        msg = accumulate(events)
        assert msg.id == "msg_1" and msg.content[0].text == "Hello wörld"  # type: ignore[union-attr]

    def test_message_id_from_the_response_id(self) -> None:
        conv = GeminiStreamConverter(model="m")
        first = conv.feed(SSEDecoder().feed(fixture("text.sse"))[0])
        assert json.loads(first[0].data or b"")["message"]["id"] == "msg_resp-text-1"

    def test_each_part_is_emitted_as_its_chunk_arrives(self) -> None:
        decoder, conv = SSEDecoder(), GeminiStreamConverter(model="m")
        first, second = decoder.feed(fixture("text.sse"))
        assert [e.event for e in conv.feed(first)] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
        ]
        assert [e.event for e in conv.feed(second)] == ["content_block_delta", "content_block_stop"]
        assert [e.event for e in conv.close()] == ["message_delta", "message_stop"]
        assert conv.ended and conv.usage_reported

    def test_thoughts_with_a_signature(self) -> None:
        events = convert(fixture("thoughts.sse"))
        assert summary(events) == [
            ("message_start", {"input_tokens": 12, "output_tokens": 0}),
            ("start", 0, "thinking"),
            ("thinking", 0, "**Weighing options**\n\nThe user wants"),
            ("thinking", 0, " a short answer."),
            ("signature", 0, "tbx1.g.CiQB0e2Kb1sig=="),
            ("stop", 0),
            ("start", 1, "text"),
            ("text", 1, "42."),
            ("stop", 1),
            ("end", "end_turn", {"input_tokens": 12, "output_tokens": 32}),
            ("message_stop",),
        ]
        accumulate(events)

    def test_calls_with_ids_and_the_signature_on_the_first(self) -> None:
        events = convert(fixture("calls_ids.sse"))
        assert summary(events) == [
            ("message_start", {"input_tokens": 40, "output_tokens": 0}),
            ("start", 0, "thinking"),
            ("thinking", 0, "I'll check both cities."),
            ("signature", 0, "tbx1.g.Sig_A/3+xyz"),
            ("stop", 0),
            ("start", 1, "tool_use", "call-paris", "get_weather"),
            ("partial", 1, '{"city": "Paris"}'),
            ("stop", 1),
            ("start", 2, "tool_use", "call-london", "get_weather"),
            ("partial", 2, '{"city": "London"}'),
            ("stop", 2),
            ("end", "tool_use", {"input_tokens": 40, "output_tokens": 35}),
            ("message_stop",),
        ]
        msg = accumulate(events)
        assert [b.input for b in msg.content[1:]] == [{"city": "Paris"}, {"city": "London"}]  # type: ignore[union-attr]

    def test_calls_without_ids_across_chunks(self) -> None:
        events = convert(fixture("calls_no_ids.sse"))
        starts = [s for s in summary(events) if s[0] == "start"]
        ids = [s[3] for s in starts[1:]]
        assert [s[2] for s in starts] == ["text", "tool_use", "tool_use", "tool_use"]
        assert [s[4] for s in starts[1:]] == ["Read", "Read", "Bash"]
        assert len(set(ids)) == 3 and all(i.startswith("toolu_") for i in ids)
        assert tool_ids(convert(fixture("calls_no_ids.sse"))) == ids  # stable for one message id
        assert set(tool_ids(convert(fixture("calls_no_ids.sse"), message_id="msg_2"))).isdisjoint(ids)
        assert summary(events)[-2] == ("end", "tool_use", {"input_tokens": 30, "output_tokens": 25})
        msg = accumulate(events)
        assert msg.content[3].input == {}  # type: ignore[union-attr]

    def test_a_text_signature_is_an_empty_thinking_block(self) -> None:
        events = convert(fixture("text_signature.sse"))
        assert summary(events) == [
            ("message_start", {"input_tokens": 0, "output_tokens": 0}),
            ("start", 0, "text"),
            ("text", 0, "The answer"),
            ("text", 0, " is 4."),
            ("stop", 0),
            ("start", 1, "thinking"),
            ("signature", 1, "tbx1.g.TextSig=="),
            ("stop", 1),
            ("end", "end_turn", {"input_tokens": 6, "output_tokens": 13}),
            ("message_stop",),
        ]
        accumulate(events)

    def test_safety_stop_is_a_refusal(self) -> None:
        assert summary(convert(fixture("safety.sse")))[-2:] == [
            ("end", "refusal", {"input_tokens": 8, "output_tokens": 3}),
            ("message_stop",),
        ]

    @pytest.mark.parametrize(
        "reason", ["RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"]
    )
    def test_other_filters_are_refusals(self, reason: str) -> None:
        raw = fixture("safety.sse").replace(b'"SAFETY"', json.dumps(reason).encode())
        assert summary(convert(raw))[-2][1] == "refusal"

    def test_blocked_prompt_is_an_empty_refusal(self) -> None:
        events = convert(fixture("prompt_blocked.sse"))
        assert summary(events) == [
            ("message_start", {"input_tokens": 7, "output_tokens": 0}),
            ("end", "refusal", {"input_tokens": 7, "output_tokens": 0}),
            ("message_stop",),
        ]
        assert accumulate(events).content == []

    def test_max_tokens(self) -> None:
        assert summary(convert(fixture("max_tokens.sse")))[-2] == (
            "end",
            "max_tokens",
            {"input_tokens": 5, "output_tokens": 4},
        )

    def test_usage_cached_and_thoughts_after_the_finish(self) -> None:
        events = convert(fixture("usage_cached.sse"))
        usage = {"input_tokens": 2050, "output_tokens": 102, "cache_read_input_tokens": 8000}
        assert summary(events) == [
            ("message_start", {"input_tokens": 0, "output_tokens": 0}),
            ("start", 0, "text"),
            ("text", 0, "Done."),
            ("stop", 0),
            ("end", "end_turn", usage),
            ("message_stop",),
        ]
        assert accumulate(events).usage.cache_read_input_tokens == 8000

    def test_no_usage_is_an_estimate(self) -> None:
        raw = (
            b'data: {"candidates":[{"content":{"parts":[{"text":"hello there"}]},"finishReason":"STOP"}]}\n\n'
        )
        decoder, conv = SSEDecoder(), GeminiStreamConverter(model="m")
        for event in decoder.feed(raw):
            conv.feed(event)
        end = json.loads(conv.close()[0].data or b"")
        assert end["usage"]["output_tokens"] > 0 and "input_tokens" not in end["usage"]
        assert not conv.usage_reported

    def test_error_chunk(self) -> None:
        with pytest.raises(UpstreamStreamError) as caught:
            convert(fixture("error.sse"))
        assert caught.value.error_type == "overloaded_error"
        assert "overloaded" in str(caught.value) and "UNAVAILABLE" in str(caught.value)

    def test_error_chunk_reason_is_read_as_on_http(self) -> None:
        # A refused key inside a stream is the operator's credential (fails over as such),
        # exactly as the same object in an HTTP 400 answer is.
        err = {
            "code": 400,
            "message": "API key not valid.",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        }
        raw = b"data: " + json.dumps({"error": err}).encode() + b"\r\n\r\n"
        with pytest.raises(UpstreamStreamError) as caught:
            convert(raw)
        assert caught.value.error_type == "authentication_error"
        assert google_error(400, {}, json.dumps({"error": err}).encode(), "g")[0] == "authentication_error"

    def test_no_finish_reason(self) -> None:
        with pytest.raises(ConversionError, match="finishReason"):
            convert(fixture("no_finish.sse"))

    def test_malformed_function_call(self) -> None:
        with pytest.raises(ConversionError, match="MALFORMED_FUNCTION_CALL"):
            convert(fixture("malformed_call.sse"))

    def test_data_that_is_not_json(self) -> None:
        with pytest.raises(ConversionError):
            GeminiStreamConverter(model="m").feed(SSEEvent(raw=b"", data=b"{nope"))

    @settings(max_examples=150, deadline=None)
    @given(
        name=st.sampled_from(
            ["text.sse", "thoughts.sse", "calls_ids.sse", "calls_no_ids.sse", "usage_cached.sse"]
        ),
        cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
    )
    def test_random_splits_give_the_same_events(self, name: str, cuts: list[int]) -> None:
        raw = fixture(name)
        whole = [e.data for e in convert(raw)]
        assert [e.data for e in convert(raw, splits=[c % len(raw) for c in cuts])] == whole


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            ("RESOURCE_EXHAUSTED", "rate_limit_error"),
            ("UNAVAILABLE", "overloaded_error"),
            ("INVALID_ARGUMENT", "invalid_request_error"),
            ("PERMISSION_DENIED", "permission_error"),
            ("UNAUTHENTICATED", "authentication_error"),
            ("NOT_FOUND", "not_found_error"),
            ("INTERNAL", "api_error"),
            ("SOMETHING_NEW", "api_error"),
        ],
    )
    def test_status_names(self, status: str, expected: str) -> None:
        assert google_error_type(status, None) == expected

    def test_http_status_when_no_name(self) -> None:
        assert google_error_type(None, 429) == "rate_limit_error"
        assert google_error_type("", 404) == "not_found_error"

    def test_google_error_body(self) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": 400,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
                    ],
                }
            }
        ).encode()
        kind, out = google_error(400, {}, body, "gemini")
        assert kind == "authentication_error"  # a bad key is the operator's credential, not the request
        err = json.loads(out)["error"]
        assert err["type"] == "authentication_error"
        assert err["message"] == (
            "provider 'gemini' answered HTTP 400: API key not valid. Please pass a valid API key. "
            "(INVALID_ARGUMENT, API_KEY_INVALID)"
        )

    def test_vertex_list_and_a_key_in_the_message(self) -> None:
        key = "AIza" + "Sy" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7"
        body = json.dumps(
            [
                {
                    "error": {
                        "code": 429,
                        "message": f"Quota exceeded for key {key}",
                        "status": "RESOURCE_EXHAUSTED",
                    }
                }
            ]
        ).encode()
        kind, out = google_error(429, {}, body, "vertex")
        assert kind == "rate_limit_error"
        assert key not in out.decode() and "Quota exceeded" in out.decode()

    def test_not_google_shape_falls_back_to_the_status(self) -> None:
        kind, out = google_error(503, {}, b"<html>bad gateway</html>", "gemini")
        assert kind == "api_error"
        assert "html" not in json.loads(out)["error"]["message"]
        assert google_error(502, {}, b"", "g")[0] == "api_error"


# -- whole answers ------------------------------------------------------------------------------


class TestResponse:
    def test_a_whole_answer(self) -> None:
        parsed = {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Thinking it over", "thought": True},
                            {"text": "Checking."},
                            {
                                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                                "thoughtSignature": "Z",
                            },
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 7, "thoughtsTokenCount": 3},
            "responseId": "r1",
        }
        msg = gemini_to_anthropic_message(parsed, "claude-sonnet-4-6")
        Message.model_validate(msg)
        assert msg["id"] == "msg_r1" and msg["model"] == "claude-sonnet-4-6"
        assert [b["type"] for b in msg["content"]] == ["thinking", "text", "thinking", "tool_use"]
        assert msg["content"][2] == {"type": "thinking", "thinking": "", "signature": "tbx1.g.Z"}
        assert msg["content"][3]["input"] == {"city": "Oslo"} and msg["content"][3]["id"].startswith("toolu_")
        assert msg["stop_reason"] == "tool_use"
        assert msg["usage"] == {"input_tokens": 20, "output_tokens": 10}

    def test_an_error_object_in_a_200(self) -> None:
        with pytest.raises(UpstreamStreamError) as caught:
            gemini_to_anthropic_message({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, "m")
        assert caught.value.error_type == "rate_limit_error"

    def test_blocked_prompt(self) -> None:
        msg = gemini_to_anthropic_message({"promptFeedback": {"blockReason": "SAFETY"}}, "m")
        assert msg["content"] == [] and msg["stop_reason"] == "refusal"

    def test_no_finish_reason(self) -> None:
        with pytest.raises(ConversionError):
            gemini_to_anthropic_message({"candidates": [{"content": {"parts": [{"text": "x"}]}}]}, "m")
        with pytest.raises(ConversionError):
            gemini_to_anthropic_message([1, 2], "m")

    def test_count_answer(self) -> None:
        assert json.loads(gemini_count_answer(b'{"totalTokens": 31, "promptTokensDetails": []}') or b"") == {
            "input_tokens": 31
        }
        assert gemini_count_answer(b"{}") is None
        assert gemini_count_answer(b"nope") is None
        assert gemini_count_answer(b'{"totalTokens": true}') is None


# -- round trip ---------------------------------------------------------------------------------


class TestRoundTrip:
    def test_stream_to_history_to_gemini(self) -> None:
        """The signature goes back on the call it came with; the result answers it by id and name."""
        for name in ("calls_ids.sse", "calls_no_ids.sse"):
            msg = accumulate(convert(fixture(name))).model_dump(exclude_none=True)
            calls = [b for b in msg["content"] if b["type"] == "tool_use"]
            follow_up = {
                "messages": [
                    {"role": "user", "content": "weather in Paris and London?"},
                    {"role": "assistant", "content": msg["content"]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": c["id"], "content": f"result {i}"}
                            for i, c in enumerate(calls)
                        ],
                    },
                ]
            }
            contents = to_gemini(follow_up).body["contents"]
            model_parts = contents[1]["parts"]
            call_parts = [p for p in model_parts if "functionCall" in p]
            assert [p["functionCall"]["id"] for p in call_parts] == [c["id"] for c in calls]
            responses = [p["functionResponse"] for p in contents[2]["parts"]]
            assert [(r["id"], r["name"]) for r in responses] == [(c["id"], c["name"]) for c in calls]
            if name == "calls_ids.sse":  # Gemini's own signature, on the first call, as it was sent
                assert call_parts[0]["thoughtSignature"] == "Sig_A/3+xyz"
                assert "thoughtSignature" not in call_parts[1]
                assert all("thought" not in p for p in model_parts)
            else:  # none was sent: the documented bypass on the first call
                assert call_parts[0]["thoughtSignature"] == SKIP_SIGNATURE
                assert model_parts[0] == {"text": "Reading files."}

    def test_text_signature_round_trip(self) -> None:
        msg = accumulate(convert(fixture("text_signature.sse"))).model_dump(exclude_none=True)
        contents = to_gemini({"messages": [{"role": "assistant", "content": msg["content"]}]}).body[
            "contents"
        ]
        assert contents[0]["parts"] == [{"text": "The answer is 4.", "thoughtSignature": "TextSig=="}]
