"""Anthropic stream events, built in one place: the payloads and their SSE bytes.

Everything that makes Anthropic events (the converter from OpenAI streams, the reshaping of a
JSON message into a stream, the simulator, our own errors and pings) builds them here, so the
wire form (compact JSON, ``event:`` named after the payload's ``type``, non-ASCII kept as is)
is written once and matches what Anthropic's API sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trio_balancer.errors import error_body
from trio_balancer.protocol.sse import SSEEvent, encode_event

__all__ = [
    "PING",
    "content_block_delta",
    "content_block_start",
    "content_block_stop",
    "count_answer",
    "dumps",
    "encode",
    "error_event",
    "error_sse_event",
    "message_delta",
    "message_start",
    "message_stop",
    "ping",
    "sse_event",
]


def dumps(payload: Any) -> str:
    """JSON as Anthropic writes it on the wire: compact, non-ASCII kept."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def count_answer(body: bytes, field: str) -> bytes | None:
    """A provider's count answer (``{field: N}``: Bedrock's ``inputTokens``, Gemini's
    ``totalTokens``) as Anthropic's ``{"input_tokens": N}``; None if it is not that."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    tokens = parsed.get(field) if isinstance(parsed, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return None
    return dumps({"input_tokens": tokens}).encode()


def encode(payload: Mapping[str, Any]) -> bytes:
    """One event's bytes; the event name is the payload's ``type``."""
    return encode_event(payload["type"], dumps(payload))


def sse_event(payload: Mapping[str, Any]) -> SSEEvent:
    """One event as the decoder would have produced it (raw bytes, name and data)."""
    data = dumps(payload)
    return SSEEvent(raw=encode_event(payload["type"], data), event=payload["type"], data=data.encode())


def error_event(error_type: str, message: str) -> bytes:
    """An error after the response was committed: the SSE form of the Anthropic error body."""
    return encode_event("error", error_body(error_type, message).decode())


def error_sse_event(body: bytes) -> SSEEvent:
    """An Anthropic error body as a decoded ``event: error``."""
    return SSEEvent(raw=encode_event("error", body.decode()), event="error", data=body)


def message_start(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "message_start", "message": message}


def content_block_start(index: int, block: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def content_block_delta(index: int, delta: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def content_block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(delta: Mapping[str, Any], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The end of a message; ``usage`` None leaves the field out (a provider that sends none)."""
    if usage is None:
        return {"type": "message_delta", "delta": delta}
    return {"type": "message_delta", "delta": delta, "usage": usage}


def message_stop() -> dict[str, Any]:
    return {"type": "message_stop"}


def ping() -> dict[str, Any]:
    return {"type": "ping"}


# What a converted stream sends during long silences, as Anthropic's own streams do.
PING = encode(ping())
