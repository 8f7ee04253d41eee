"""How each provider kind answers, read as Anthropic's answers: one table, sans-I/O.

The relay and the attempt (``flight/``) handle every kind the same way: decode the body
incrementally, convert each event when the kind is not Anthropic's, hold a JSON answer and
convert it, read an error answer as an Anthropic error. What differs per kind is only which
decoder, which converters and which error reader, and that is what an :class:`AnswerFormat`
names. Adding a kind adds a row here and an adapter in ``upstream/families.py``; nothing in
the flight changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from trio_balancer.protocol.bedrock import (
    EVENT_STREAM_TYPE,
    EventStreamDecoder,
    bedrock_count_answer,
    bedrock_error,
)
from trio_balancer.protocol.convert import (
    StreamConverter,
    UpstreamStreamError,
    openai_error_to_anthropic,
    openai_error_type,
    to_anthropic_message,
)
from trio_balancer.protocol.convert.gemini_response import gemini_count_answer, gemini_to_anthropic_message
from trio_balancer.protocol.convert.gemini_stream import GeminiStreamConverter
from trio_balancer.protocol.google_errors import google_error
from trio_balancer.protocol.sse import SSEDecoder, SSEEvent
from trio_balancer.protocol.thinking import mint_signature
from trio_balancer.protocol.upstream_errors import anthropic_error_in_200
from trio_balancer.protocol.vertex import vertex_error, vertex_error_in_200

__all__ = [
    "ANSWER_FORMATS",
    "AnswerFormat",
    "EventConverter",
    "EventDecoder",
    "answer_format",
]

SSE_TYPE = "text/event-stream"


class EventDecoder(Protocol):
    """Bytes in, whole events out, incrementally (``protocol/sse.SSEDecoder`` is one)."""

    def feed(self, data: bytes) -> list[SSEEvent]: ...
    def close(self) -> SSEEvent | None: ...


class EventConverter(Protocol):
    """A kind's stream events in, Anthropic's out, as soon as each is known.

    Raises ``UpstreamStreamError`` for an error the stream carries and ``ConversionError``
    for a stream that cannot be read; ``usage_reported`` says whether the stream had usage.
    """

    usage_reported: bool

    def feed(self, event: SSEEvent) -> list[SSEEvent]: ...
    def close(self) -> list[SSEEvent]: ...


# (status, response headers, body, provider name) -> (Anthropic error type, Anthropic error body)
ErrorReader = Callable[[int, Mapping[str, str], bytes, str], tuple[str, bytes]]


@attrs.frozen
class AnswerFormat:
    """What a kind's answers are, for the flight.

    ``converted`` (derived: the kind has a stream ``converter``): the answer is not Anthropic's
    bytes, so the client is sent our model name rather than the provider's. ``stream_types``: the content types
    of a streamed answer. ``decoder(max_event_bytes)``: the incremental decoder of a stream.
    ``converter(model)``: the stream converter, None for Anthropic events. ``message(parsed,
    model)``: a JSON answer as an Anthropic message (raises ``UpstreamStreamError`` for an
    error object, ``ConversionError`` for anything else), None for Anthropic's own.
    ``error``: an HTTP error answer as Anthropic's, None when it already is (or is read as
    one). ``error_in_200(body, provider)``: an error object in a 200 JSON answer of a kind not
    converted, as ``(type, Anthropic error body)``, else None. ``count``: a count-tokens answer
    as ``{"input_tokens": N}``, None when it already is.
    ``own_headers``: the provider's response headers are Anthropic's (rate limits, request id)
    and reach the client; a cloud's or a converted kind's are its own, and the client sees only
    the request id.
    """

    own_headers: bool = True
    stream_types: tuple[str, ...] = (SSE_TYPE,)
    decoder: Callable[[int], EventDecoder] = SSEDecoder
    converter: Callable[[str], EventConverter] | None = None
    message: Callable[[Any, str], dict[str, Any]] | None = None
    error: ErrorReader | None = None
    error_in_200: Callable[[bytes, str], tuple[str, bytes] | None] = anthropic_error_in_200
    count: Callable[[bytes], bytes | None] | None = None

    @property
    def converted(self) -> bool:
        return self.converter is not None

    def is_stream(self, content_type: str) -> bool:
        return content_type.startswith(self.stream_types)


def _openai_stream(model: str) -> EventConverter:
    return StreamConverter(model=model, sign=mint_signature)


def _gemini_stream(model: str) -> EventConverter:
    return GeminiStreamConverter(model=model)


def _openai_message(parsed: Any, model: str) -> dict[str, Any]:
    """A chat completion as a message; an error object in a 200 is that error."""
    if isinstance(parsed, dict) and parsed.get("error") and not parsed.get("choices"):
        err = parsed["error"] if isinstance(parsed["error"], dict) else {"message": str(parsed["error"])}
        raise UpstreamStreamError(
            str(err.get("message") or "error object in a 200 answer"), openai_error_type(err)
        )
    return to_anthropic_message(parsed, model=model, sign=mint_signature)


def _openai_error(status: int, headers: Mapping[str, str], body: bytes, provider: str) -> tuple[str, bytes]:
    return openai_error_to_anthropic(status, body, provider)


ANSWER_FORMATS: Mapping[str, AnswerFormat] = {
    "anthropic": AnswerFormat(),
    "openai": AnswerFormat(
        own_headers=False, converter=_openai_stream, message=_openai_message, error=_openai_error
    ),
    # Anthropic's events in AWS event-stream frames; JSON answers are Anthropic's messages.
    "bedrock": AnswerFormat(
        own_headers=False,
        stream_types=(EVENT_STREAM_TYPE, SSE_TYPE),
        decoder=EventStreamDecoder,
        error=bedrock_error,
        count=bedrock_count_answer,
    ),
    # Anthropic's SSE and JSON as they are; errors in Anthropic's shape or Google's.
    "vertex": AnswerFormat(own_headers=False, error=vertex_error, error_in_200=vertex_error_in_200),
    # Gemini's generateContent answers and Google's errors, converted.
    "gemini": AnswerFormat(
        own_headers=False,
        converter=_gemini_stream,
        message=gemini_to_anthropic_message,
        error=google_error,
        count=gemini_count_answer,
    ),
}


def answer_format(kind: str) -> AnswerFormat:
    return ANSWER_FORMATS[kind]
