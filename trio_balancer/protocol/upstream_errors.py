"""Reading what providers send as errors: Anthropic error bodies and events, and scrubbing them.

A provider's error can arrive as an HTTP error body, as an ``event: error`` in a stream, as a
bare ``data:`` error object, or inside a 200 answer. These functions recognise each and make
it safe to relay: the message is scrubbed of every credential the request carried upstream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from trio_balancer.protocol.events import dumps, error_sse_event
from trio_balancer.protocol.sse import MalformedEventData, SSEEvent
from trio_balancer.redaction import scrub

__all__ = ["error_type_of", "is_error_data", "parse_error_event", "scrub_error_body", "scrub_error_event"]


def error_type_of(body: bytes) -> str | None:
    """The ``error.type`` of an Anthropic error body; None when ``body`` is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict) and parsed.get("type") == "error" and isinstance(parsed.get("error"), dict):
        t = parsed["error"].get("type")
        return t if isinstance(t, str) else "api_error"
    return None


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
    """An Anthropic error body with its message scrubbed; the same bytes when nothing changed."""
    try:
        parsed = json.loads(body)
        message = parsed["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body
    if not isinstance(message, str):
        return body
    clean = scrub(message, secrets)
    if clean == message:
        return body
    parsed["error"]["message"] = clean
    return dumps(parsed).encode()


def scrub_error_event(event: SSEEvent, secrets: Sequence[str]) -> SSEEvent:
    """A provider's error event with its message scrubbed; the same event when nothing changed."""
    if event.data is None:
        return event
    clean = scrub_error_body(event.data, secrets)
    if clean is event.data:
        return event
    return error_sse_event(clean)
