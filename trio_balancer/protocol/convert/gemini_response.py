"""Gemini ``generateContent`` answer (JSON) -> Anthropic Message, and ``countTokens``. Pure.

A whole answer has the shape of one stream chunk holding every part, so it is converted by
the stream converter fed that one chunk and the events assembled into a message
(``reshape.MessageAssembler``): one mapping of parts, signatures, finish reasons and usage.
"""

from __future__ import annotations

from typing import Any

from trio_balancer.protocol.convert.errors import ConversionError
from trio_balancer.protocol.convert.gemini_stream import GeminiStreamConverter, raise_for_gemini_error
from trio_balancer.protocol.events import count_answer, dumps
from trio_balancer.protocol.reshape import AssemblyError, MessageAssembler
from trio_balancer.protocol.sse import SSEEvent

__all__ = ["gemini_count_answer", "gemini_to_anthropic_message"]


def gemini_to_anthropic_message(parsed: Any, model: str) -> dict[str, Any]:
    """The Anthropic message for a parsed ``GenerateContentResponse``.

    Raises ``UpstreamStreamError`` for a Google error object in a 200, ``ConversionError``
    for an answer that is not a usable message.
    """
    raise_for_gemini_error(parsed)
    if not isinstance(parsed, dict):
        raise ConversionError("the upstream answer is not a JSON object")
    converter = GeminiStreamConverter(model=model)
    data = dumps(parsed).encode()
    assembler = MessageAssembler()
    for event in [*converter.feed(SSEEvent(raw=b"", data=data)), *converter.close()]:
        assembler.feed(event)
    try:
        return assembler.message()
    except AssemblyError as exc:  # our own events: cannot happen unless the converter is wrong
        raise ConversionError(str(exc)) from None


def gemini_count_answer(body: bytes) -> bytes | None:
    """``countTokens``' ``{"totalTokens": N}`` as Anthropic's ``{"input_tokens": N}``."""
    return count_answer(body, "totalTokens")
