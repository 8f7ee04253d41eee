"""Reading what providers send as errors: Anthropic error bodies and events, and scrubbing them.

A provider's error can arrive as an HTTP error body, as an ``event: error`` in a stream, as a
bare ``data:`` error object, or inside a 200 answer. These functions recognise each and make
it safe to relay: the message is scrubbed of every credential the request carried upstream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trio_balancer.protocol.events import dumps, error_sse_event
from trio_balancer.protocol.sse import MalformedEventData, SSEEvent
from trio_balancer.redaction import scrub

__all__ = [
    "error_type_of",
    "is_error_data",
    "model_not_served",
    "parse_error_event",
    "scrub_error_body",
    "scrub_error_event",
]


def error_type_of(body: bytes) -> str | None:
    """The ``error.type`` of an Anthropic error body; None when ``body`` is not one."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(parsed, dict) and parsed.get("type") == "error" and isinstance(parsed.get("error"), dict):
        t = parsed["error"].get("type")
        return t if isinstance(t, str) else "api_error"
    return None


# What the services say when the model asked for is not one they serve (at this region, this
# project, this key), as opposed to a request that is wrong anywhere: Anthropic's 404 names the
# model ("model: claude-x"); Vertex's and Gemini's 404 NOT_FOUND name the publisher model or
# "models/x"; Bedrock answers 400 ValidationException for an id it does not know or one that
# needs an inference profile in that region.
_BEDROCK_NOT_SERVED = ("model identifier is invalid", "on-demand throughput isn", "inference profile")


def model_not_served(status: int, body: bytes, kind: str) -> bool:
    """Whether a provider's error answer, as it sent it, says it does not serve the model asked
    for, which another provider may. Read in the error's own message (never in the rest of the
    body, where a server may echo the client's text); a 404 that is not JSON at all (a wrong
    base URL's page) is the provider's configuration too. Bedrock's 400 phrases count only
    from Bedrock."""
    if status not in (400, 404) or len(body) > 64 * 1024:
        return False
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return status == 404
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, dict) else None
    holder = err if isinstance(err, dict) else parsed
    message = holder.get("message") if isinstance(holder, dict) else None
    if not isinstance(message, str):
        return False
    text = message.lower()
    if status == 404:
        return "model" in text
    return kind == "bedrock" and any(phrase in text for phrase in _BEDROCK_NOT_SERVED)


def anthropic_error_in_200(body: bytes, provider: str) -> tuple[str, bytes] | None:
    """``(error type, body)`` of an Anthropic error object answered with a 200, else None."""
    error_type = error_type_of(body)
    return None if error_type is None else (error_type, body)


def is_error_data(data: bytes | None) -> bool:
    """An event without an ``event:`` line whose data is an Anthropic error object."""
    return (
        data is not None
        and data.lstrip()[:1] == b"{"
        and b'"error"' in data
        and error_type_of(data) is not None
    )


def parse_error_event(event: SSEEvent) -> tuple[str, str]:
    """``(error type, message)`` of a provider's error event, whatever shape it is in."""
    try:
        data = event.json()
        err = data.get("error", {}) if isinstance(data, dict) else {}
        return str(err.get("type") or "api_error"), str(err.get("message") or "")
    except MalformedEventData:
        return "api_error", "malformed error event"


def scrub_error_body(body: bytes, secrets: Sequence[str]) -> bytes:
    """An Anthropic error body with every string in it scrubbed (not only the message: a
    provider may echo a header in another field, found by attack); the same bytes when
    nothing changed."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return body
    try:
        clean = _scrub_strings(parsed, secrets)
    except RecursionError:  # nested past the stack: only what an error needs is kept
        err = parsed["error"]
        said = {
            "type": str(err.get("type", "api_error")),
            "message": scrub(str(err.get("message", "")), secrets),
        }
        return dumps({"type": "error", "error": said}).encode()
    return body if clean == parsed else dumps(clean).encode()


def _scrub_strings(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub_strings(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_strings(v, secrets) for v in value]
    return value


def scrub_error_event(event: SSEEvent, secrets: Sequence[str]) -> SSEEvent:
    """A provider's error event with its message scrubbed; the same event when nothing changed."""
    if event.data is None:
        return event
    clean = scrub_error_body(event.data, secrets)
    if clean is event.data:
        return event
    return error_sse_event(clean)
