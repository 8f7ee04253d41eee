"""The pure pieces of the cloud families: model ids, Bedrock's event stream, error answers."""

from __future__ import annotations

import binascii
import contextlib
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.protocol import events
from trio_balancer.protocol.bedrock import (
    EventStreamDecoder,
    EventStreamError,
    bedrock_body,
    bedrock_count_answer,
    bedrock_error,
    bedrock_path,
)
from trio_balancer.protocol.cloud_models import (
    anthropic_model_name,
    bedrock_model_id,
    vertex_model_id,
)
from trio_balancer.protocol.pricing import PriceTable
from trio_balancer.protocol.sse import EventTooLarge
from trio_balancer.protocol.vertex import vertex_body, vertex_error
from trio_balancer.tools.sim_bedrock import event_frame, exception_frame

ANTHROPIC_EVENTS = [
    events.message_start({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                          "usage": {"input_tokens": 7, "output_tokens": 1}}),
    events.content_block_start(0, {"type": "text", "text": ""}),
    events.content_block_delta(0, {"type": "text_delta", "text": "héllo 流式"}),
    events.content_block_stop(0),
    events.message_delta({"stop_reason": "end_turn"}, {"output_tokens": 3}),
    events.message_stop(),
]  # fmt: skip
WIRE = b"".join(event_frame(events.dumps(e).encode()) for e in ANTHROPIC_EVENTS)


@pytest.mark.parametrize(
    ("model", "profile", "bedrock", "vertex"),
    [
        ("claude-sonnet-4-5-20250929", "global", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5@20250929"),
        ("claude-sonnet-4-5", "us", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5@20250929"),
        ("claude-haiku-4-5", "", "anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5@20251001"),
        ("claude-opus-4-6", "eu", "eu.anthropic.claude-opus-4-6-v1", "claude-opus-4-6"),
        ("claude-sonnet-4-6", "global", "global.anthropic.claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("claude-opus-4-0", "global", "global.anthropic.claude-opus-4-20250514-v1:0", "claude-opus-4@20250514"),
        ("us.anthropic.claude-x-v1:0", "global", "us.anthropic.claude-x-v1:0", "us.anthropic.claude-x-v1:0"),
        ("claude-sonnet-4-5@20250929", "global", "claude-sonnet-4-5@20250929", "claude-sonnet-4-5@20250929"),
    ],
)  # fmt: skip
def test_model_ids(model: str, profile: str, bedrock: str, vertex: str) -> None:
    assert bedrock_model_id(model, profile) == bedrock
    assert vertex_model_id(model) == vertex


def test_cloud_ids_are_priced_as_their_anthropic_model() -> None:
    table = PriceTable()
    for cloud_id in ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5@20250929"):
        assert anthropic_model_name(cloud_id) == "claude-sonnet-4-5-20250929"
        assert table.find(cloud_id) == table.find("claude-sonnet-4-5-20250929") is not None


def test_bedrock_body_moves_model_stream_and_betas() -> None:
    body = json.loads(bedrock_body({"model": "m", "stream": True, "max_tokens": 5, "messages": []}, ["b1"]))
    assert body == {
        "max_tokens": 5,
        "messages": [],
        "anthropic_version": "bedrock-2023-05-31",
        "anthropic_beta": ["b1"],
    }
    assert (
        bedrock_path("us.anthropic.x-v1:0", stream=True)
        == "/model/us.anthropic.x-v1%3A0/invoke-with-response-stream"
    )
    vbody = json.loads(vertex_body({"model": "m", "stream": True, "max_tokens": 5}))
    assert vbody == {"stream": True, "max_tokens": 5, "anthropic_version": "vertex-2023-10-16"}


def decode_all(chunks: list[bytes]) -> list[tuple[str | None, bytes | None, bytes]]:
    decoder = EventStreamDecoder(1 << 20)
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert decoder.close() is None
    return [(e.event, e.data, e.raw) for e in out]


def test_frames_become_the_anthropic_events_they_carry_byte_for_byte() -> None:
    decoded = decode_all([WIRE])
    assert [d[0] for d in decoded] == [e["type"] for e in ANTHROPIC_EVENTS]
    assert [d[1] for d in decoded] == [events.dumps(e).encode() for e in ANTHROPIC_EVENTS]
    assert decoded[2][2] == events.encode(ANTHROPIC_EVENTS[2])  # the SSE event Anthropic would send


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=40))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [WIRE[a:b] for a, b in zip([0, *points], [*points, len(WIRE)], strict=True)]
    assert decode_all(chunks) == decode_all([WIRE])


def test_an_exception_frame_is_an_anthropic_error_event() -> None:
    (event,) = EventStreamDecoder(1 << 20).feed(exception_frame("throttlingException", "slow down"))
    assert event.event == "error"
    assert json.loads(event.data or b"")["error"] == {
        "type": "rate_limit_error",
        "message": "Bedrock throttlingException: slow down",
    }
    (event,) = EventStreamDecoder(1 << 20).feed(exception_frame("modelStreamErrorException", "boom"))
    assert json.loads(event.data or b"")["error"]["type"] == "api_error"


def crc_frame(headers: bytes, payload: bytes) -> bytes:
    """An event-stream frame with correct CRCs around whatever ``headers`` and ``payload`` are."""
    total = 16 + len(headers) + len(payload)
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", binascii.crc32(body))


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (WIRE[:-1] + bytes([WIRE[-1] ^ 1]), EventStreamError),  # message CRC
        (b"\x00\x00\x00\x05" + b"\x00" * 12, EventStreamError),  # too short to be a frame
        ((10_000_000).to_bytes(4, "big") + b"\x00" * 8, EventTooLarge),  # refused from the prelude
        (event_frame(b"not json"), EventStreamError),
        # CRCs that hold around insides that do not: an upstream that lies computes them too.
        (crc_frame(b"\x01x\xc8" + b"v", b"{}"), EventStreamError),  # unknown header type
        (crc_frame(b"\x01x\x07\x00\x02\xff\xfe", b"{}"), EventStreamError),  # header not UTF-8
        (crc_frame(b"\x01x\x04\x00", b"{}"), EventStreamError),  # header value cut short
    ],
)
def test_broken_frames_are_refused(wire: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        EventStreamDecoder(1 << 20).feed(wire)


@settings(max_examples=300, deadline=None)
@given(headers=st.binary(max_size=64), payload=st.binary(max_size=64))
def test_any_frame_with_good_crcs_is_read_or_refused_never_crashes(headers: bytes, payload: bytes) -> None:
    with contextlib.suppress(EventStreamError, EventTooLarge):
        EventStreamDecoder(1 << 20).feed(crc_frame(headers, payload))


def test_a_stream_cut_inside_a_frame_is_an_error() -> None:
    decoder = EventStreamDecoder(1 << 20)
    decoder.feed(WIRE[:10])
    with pytest.raises(EventStreamError):
        decoder.close()


@pytest.mark.parametrize(
    ("status", "header", "body", "error_type"),
    [
        (429, "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/", b'{"message":"Too many requests"}', "rate_limit_error"),
        (503, "ServiceUnavailableException", b'{"message":"x"}', "overloaded_error"),
        (400, "ValidationException", b'{"message":"messages: bad"}', "invalid_request_error"),
        (400, "ServiceQuotaExceededException", b'{"message":"quota"}', "rate_limit_error"),
        (403, "", b'{"__type":"UnrecognizedClientException","message":"bad token"}', "authentication_error"),
        (500, "", b"<html>", "api_error"),
    ],
)  # fmt: skip
def test_bedrock_errors(status: int, header: str, body: bytes, error_type: str) -> None:
    found, answer = bedrock_error(status, {"x-amzn-errortype": header} if header else {}, body, "b")
    assert found == error_type
    assert json.loads(answer)["error"]["type"] == error_type


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (429, b'{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}', "rate_limit_error"),
        (503, b'[{"error":{"code":503,"message":"x","status":"UNAVAILABLE"}}]', "overloaded_error"),
        (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "overloaded_error"),
        (403, b'{"error":{"code":403,"status":"PERMISSION_DENIED"}}', "permission_error"),
        (502, b"bad gateway", "api_error"),
    ],
)  # fmt: skip
def test_vertex_errors(status: int, body: bytes, error_type: str) -> None:
    found, answer = vertex_error(status, {}, body, "v")
    assert found == error_type and json.loads(answer)["error"]["type"] == error_type


def test_bedrock_count_answer() -> None:
    assert bedrock_count_answer(b'{"inputTokens": 12}') == b'{"input_tokens":12}'
    assert bedrock_count_answer(b'{"inputTokens": true}') is None
    assert bedrock_count_answer(b"nope") is None


class TestAttackFindings:
    """What the attack on issue 18 found, each held here."""

    def test_a_model_name_cannot_add_path_segments_on_any_cloud(self) -> None:
        from trio_balancer.protocol.gemini import gemini_path
        from trio_balancer.protocol.vertex import vertex_path

        bad = "claude-haiku-4-5/../../v1/projects/VICTIM?x#y"
        for path in (
            vertex_path("p", "us-east5", bad, stream=True),
            gemini_path(bad, stream=True),
            bedrock_path(bad, stream=True),
        ):
            assert "/../" not in path and "?x" not in path and "#" not in path, path
        assert bedrock_path("..", stream=False) == "/model/%2E%2E/invoke"
        assert vertex_path("p", "r", "claude-sonnet-4-5@20250929", stream=False).endswith(
            "/claude-sonnet-4-5@20250929:rawPredict"
        )

    def test_a_project_id_that_is_not_one_is_refused_at_load(self) -> None:
        from trio_balancer.config import ConfigError, parse_config

        with pytest.raises(ConfigError, match="project"):
            parse_config(
                {"providers": [{"name": "v", "kind": "vertex", "project": "p/../q?x", "region": "global"}]}
            )

    def test_json_nested_past_the_stack_is_a_conversion_error_not_a_crash(self) -> None:
        from trio_balancer.protocol.convert.errors import ConversionError
        from trio_balancer.protocol.convert.gemini_response import gemini_count_answer
        from trio_balancer.protocol.convert.gemini_stream import GeminiStreamConverter
        from trio_balancer.protocol.google_errors import google_error
        from trio_balancer.protocol.sse import SSEEvent
        from trio_balancer.protocol.upstream_errors import error_type_of, scrub_error_body

        deep = b"[" * 100_000 + b"]" * 100_000
        with pytest.raises(ConversionError):
            GeminiStreamConverter(model="m").feed(SSEEvent(raw=b"", data=deep))
        assert gemini_count_answer(deep) is None and error_type_of(deep) is None
        assert scrub_error_body(deep, ["k"]) == deep
        assert google_error(500, {}, deep, "g")[0] == "api_error"

    @pytest.mark.parametrize("details", [5, True, [{"reason": ["x"]}], [{"reason": {"a": 1}}], "s"])
    def test_google_errors_with_odd_details_are_read(self, details: Any) -> None:
        from trio_balancer.protocol.google_errors import google_error

        body = json.dumps(
            {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}}
        ).encode()
        assert google_error(429, {}, body, "g")[0] == "rate_limit_error"

    def test_a_vertex_200_carrying_googles_error_is_that_error(self) -> None:
        from trio_balancer.protocol.vertex import vertex_error_in_200

        for body in (
            {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}},
            [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}}],
        ):
            found = vertex_error_in_200(json.dumps(body).encode(), "vertex")
            assert found is not None and found[0] == "rate_limit_error"
            assert json.loads(found[1])["error"]["type"] == "rate_limit_error"
        assert vertex_error_in_200(b'{"type":"message","content":[]}', "vertex") is None

    def test_a_secret_echoed_in_any_field_of_an_error_is_scrubbed(self) -> None:
        from trio_balancer.protocol.upstream_errors import scrub_error_body

        token = "ya29.sim-abcdefghijklmnopqrstuvwxyz012345"
        body = json.dumps(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "bad", "echo": f"Bearer {token}"},
            }
        ).encode()
        assert token not in scrub_error_body(body, [token]).decode()

    def test_duplicate_gemini_call_ids_become_distinct_tool_use_ids(self) -> None:
        from trio_balancer.protocol.convert.gemini_response import gemini_to_anthropic_message

        call = {"functionCall": {"id": "same", "name": "f", "args": {}}}
        answer = {
            "candidates": [{"content": {"parts": [call, call], "role": "model"}, "finishReason": "STOP"}]
        }
        ids = [
            b["id"] for b in gemini_to_anthropic_message(answer, "m")["content"] if b["type"] == "tool_use"
        ]
        assert len(ids) == 2 and len(set(ids)) == 2 and ids[0] == "same"


def test_every_kind_has_a_family_and_an_answer_format() -> None:
    """The three kind-keyed tables agree (found by review): a kind added to one is in all."""
    from trio_balancer.config.schema import PROVIDER_KINDS
    from trio_balancer.protocol.answers import ANSWER_FORMATS
    from trio_balancer.upstream.families import _FAMILIES

    assert set(PROVIDER_KINDS) == set(_FAMILIES) == set(ANSWER_FORMATS)
    for kind, answers in ANSWER_FORMATS.items():
        # A converted answer's headers describe the provider's bytes, not what the client gets.
        assert not (answers.converted and answers.own_headers), kind
        assert answers.converted == (answers.message is not None), kind


@pytest.mark.parametrize(
    ("status", "body", "not_served"),
    [
        (404, b'{"type":"error","error":{"type":"not_found_error","message":"model: claude-x"}}', True),
        (
            404,
            b'{"error":{"code":404,"message":"models/gemini-9 is not found for API version v1beta"}}',
            True,
        ),
        (400, b'{"message":"The provided model identifier is invalid."}', True),  # Bedrock
        (
            400,
            b'{"message":"Invocation of model ID anthropic.claude-x with on-demand throughput isn\\u2019t'
            b' supported. Retry your request with the ID or ARN of an inference profile"}',
            True,
        ),
        (404, b"<html><body>Not Found</body></html>", True),  # not the provider we think it is
        (404, b'{"type":"error","error":{"type":"not_found_error","message":"file_abc not found"}}', False),
        (
            400,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}',
            False,
        ),
        (422, b'{"message":"model"}', False),
        # A client's own text echoed back is not the provider's word (found by attack).
        (400, b'{"type":"error","error":{"message":"bad role: inference profile"}}', False),
        (400, b'{"message":"ok","echo":"The provided model identifier is invalid."}', False),
        (404, b'{"message":"nothing here","detail":"model"}', False),
    ],
)
def test_model_not_served_is_read_from_the_providers_own_words(
    status: int, body: bytes, not_served: bool
) -> None:
    from trio_balancer.protocol.upstream_errors import model_not_served

    # Bedrock's 400 phrases count from Bedrock only; a 404 from any kind.
    kind = "bedrock" if status == 400 and b'"type":"error"' not in body else "anthropic"
    assert model_not_served(status, body, kind) is not_served
    assert model_not_served(status, body, "openai") is (not_served and status == 404)
