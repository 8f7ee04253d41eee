"""Claude on Amazon Bedrock: the request body, the paths, the answers, the event stream. Pure.

Bedrock runs Anthropic's Messages API behind its own envelope, the way Anthropic's own Bedrock
SDK client calls it: the model moves from the body into the path (``/model/{id}/invoke`` or
``/model/{id}/invoke-with-response-stream``), ``stream`` leaves the body (the path says it),
``anthropic_version`` is ``bedrock-2023-05-31`` and the beta flags travel in the body as
``anthropic_beta``. Everything else is Anthropic's, both ways.

A streamed answer is an AWS event stream (``application/vnd.amazon.eventstream``): binary
frames, each with a CRC-checked prelude, headers and a payload. A ``chunk`` event's payload is
``{"bytes": base64}`` of one Anthropic SSE event's JSON; :class:`EventStreamDecoder` turns
each frame into that SSE event as soon as the frame is whole, carrying the JSON bytes as
Bedrock sent them. An ``exception`` frame (``throttlingException``, ``modelStreamErrorException``
...) becomes an Anthropic ``event: error`` of the matching type, so the commit gate and the
failover rules treat it as they treat Anthropic's own. Frame parsing and CRC checks are
botocore's (``botocore.eventstream``, imported when a decoder is made: botocore is the
optional ``[aws]`` extra); we only bound what is buffered.

Errors that are not streamed come as an HTTP status, an ``x-amzn-errortype`` header and
``{"message": ...}``; :func:`bedrock_error` reads them as Anthropic errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from trio_balancer.errors import error_body, error_type_for_status
from trio_balancer.protocol.convert.errors import ConversionError
from trio_balancer.protocol.events import count_answer, dumps
from trio_balancer.protocol.sse import EventTooLarge, SSEEvent

__all__ = [
    "BEDROCK_VERSION",
    "EVENT_STREAM_TYPE",
    "EventStreamDecoder",
    "EventStreamError",
    "bedrock_body",
    "bedrock_count_answer",
    "bedrock_count_body",
    "bedrock_error",
    "bedrock_error_type",
    "bedrock_path",
]

BEDROCK_VERSION = "bedrock-2023-05-31"
EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"
# Bedrock's exception names (HTTP ``x-amzn-errortype`` and in-stream ``:exception-type``,
# compared case-insensitively) as Anthropic error types; the commit gate and the failover
# rules then do what they do for Anthropic's own errors.
_ERROR_TYPES: Mapping[str, str] = {
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "serviceunavailableexception": "overloaded_error",
    "modelnotreadyexception": "overloaded_error",
    "modeltimeoutexception": "timeout_error",
    "internalserverexception": "api_error",
    "modelerrorexception": "api_error",
    "modelstreamerrorexception": "api_error",
    "validationexception": "invalid_request_error",
    "resourcenotfoundexception": "not_found_error",
    "accessdeniedexception": "permission_error",
    "unrecognizedclientexception": "authentication_error",
    "invalidsignatureexception": "authentication_error",
    "incompletesignatureexception": "authentication_error",
    "expiredtokenexception": "authentication_error",
    "missingauthenticationtokenexception": "authentication_error",
}
_MAX_MESSAGE = 500
# Anthropic events start with their type; reading it there saves a JSON parse per event.
_TYPE_PREFIX = re.compile(rb'\{\s*"type"\s*:\s*"([A-Za-z_]+)"')
_EVENT_TYPE = re.compile(r"[A-Za-z_]{1,64}")
# A frame is its payload plus at most this much prelude and headers, and a chunk's payload is
# the event's JSON in base64 (4 bytes per 3) inside {"bytes": ...} (and sometimes "p" padding).
_FRAME_OVERHEAD = 4096


class EventStreamError(ConversionError):
    """The event stream cannot be read: a bad frame, a bad checksum, a chunk that is not JSON."""


def bedrock_body(payload: Mapping[str, Any], betas: Sequence[str] = ()) -> bytes:
    """The InvokeModel body for an Anthropic-format ``payload`` (already fitted)."""
    body = {k: v for k, v in payload.items() if k not in ("model", "stream")}
    body.setdefault("anthropic_version", BEDROCK_VERSION)
    if betas:
        given = body.get("anthropic_beta")
        known = list(given) if isinstance(given, list) else []
        body["anthropic_beta"] = known + [b for b in betas if b not in known]
    return dumps(body).encode()


def bedrock_path(model_id: str, *, stream: bool) -> str:
    """``/model/{id}/invoke[-with-response-stream]``, the id percent-encoded (``:`` too)."""
    action = "invoke-with-response-stream" if stream else "invoke"
    return f"/model/{_segment(model_id)}/{action}"


def bedrock_count_path(model_id: str) -> str:
    return f"/model/{_segment(model_id)}/count-tokens"


def _segment(model_id: str) -> str:
    """The id as one path segment: escaped, and never ``.`` or ``..``, which URL resolution
    would remove with the segment before (a client's model name can be the id)."""
    if model_id and not model_id.strip("."):
        return "%2E" * len(model_id)
    return quote(model_id, safe="")


def bedrock_count_body(invoke_body: bytes) -> bytes:
    """CountTokens takes the InvokeModel body it would count, base64-encoded."""
    encoded = base64.b64encode(invoke_body).decode()
    return dumps({"input": {"invokeModel": {"body": encoded}}}).encode()


def bedrock_count_answer(body: bytes) -> bytes | None:
    """CountTokens' ``{"inputTokens": N}`` as Anthropic's ``{"input_tokens": N}``."""
    return count_answer(body, "inputTokens")


def bedrock_error_type(name: str, status: int | None = None) -> str:
    """A Bedrock exception name (``ThrottlingException:http://...`` or ``throttlingException``)
    as an Anthropic error type; unknown names by their HTTP status."""
    key = name.split(":", 1)[0].rsplit("#", 1)[-1].strip().lower()
    if key in _ERROR_TYPES:
        return _ERROR_TYPES[key]
    return error_type_for_status(status) if status else "api_error"


def bedrock_error(status: int, headers: Mapping[str, str], body: bytes, provider: str) -> tuple[str, bytes]:
    """An HTTP error answer of Bedrock's as ``(Anthropic error type, Anthropic error body)``."""
    name = headers.get("x-amzn-errortype", "")
    message = ""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        name = name or str(parsed.get("__type") or "")
        text = parsed.get("message", parsed.get("Message"))
        message = text if isinstance(text, str) else ""
    error_type = bedrock_error_type(name, status) if name else error_type_for_status(status)
    short = name.split(":", 1)[0].rsplit("#", 1)[-1] or f"HTTP {status}"
    said = f": {message[:_MAX_MESSAGE]}" if message else ""
    return error_type, error_body(error_type, f"provider {provider!r} (Bedrock) {short}{said}")


class EventStreamDecoder:
    """AWS event-stream bytes in, the Anthropic SSE events they carry out, incrementally.

    Whole frames are handed to botocore's parser (prelude and message CRCs checked there); a
    frame longer than the event limit is refused from its prelude, before it is buffered.
    """

    def __init__(self, max_event_bytes: int) -> None:
        from botocore.eventstream import EventStreamBuffer, ParserError  # the [aws] extra

        # What botocore raises for a frame whose CRCs hold but whose insides do not: its own
        # ParserError family, and from its decoding an unknown header type (KeyError), a header
        # that is not UTF-8 (ValueError) or is cut short (struct.error).
        self._frame_errors = (ParserError, KeyError, ValueError, struct.error)
        self._parser = EventStreamBuffer()  # handed one whole frame at a time, so it holds none
        self._max_frame = max_event_bytes * 4 // 3 + _FRAME_OVERHEAD
        self._buf = bytearray()
        self._closed = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._closed:
            raise RuntimeError("feed() after close()")
        buf = self._buf
        buf += data
        out: list[SSEEvent] = []
        pos = 0
        while len(buf) - pos >= 12:
            total = int.from_bytes(buf[pos : pos + 4], "big")
            if total > self._max_frame:
                raise EventTooLarge(f"event-stream frame of {total} bytes, over {self._max_frame}")
            if total < 16:
                raise EventStreamError(f"event-stream frame length {total} is too short")
            if len(buf) - pos < total:
                break
            event = self._event(bytes(buf[pos : pos + total]))
            pos += total
            if event is not None:
                out.append(event)
        if pos:
            del buf[:pos]
        if len(buf) > self._max_frame:  # cannot happen past the length check; kept as the bound
            raise EventTooLarge("event-stream frame over the limit")
        return out

    def close(self) -> SSEEvent | None:
        self._closed = True
        if self._buf:
            raise EventStreamError(f"stream ended inside an event-stream frame ({len(self._buf)} bytes)")
        return None

    def _event(self, frame: bytes) -> SSEEvent | None:
        self._parser.add_data(frame)
        try:
            message = next(self._parser)
        except StopIteration:
            raise EventStreamError("event-stream frame could not be parsed") from None
        except self._frame_errors as exc:
            raise EventStreamError(f"event-stream frame refused: {type(exc).__name__}") from None
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "event":
            if headers.get(":event-type") != "chunk":
                return None  # an event type this version does not know: nothing to relay
            return _chunk_event(message.payload)
        if kind == "exception":
            return _exception_event(str(headers.get(":exception-type", "")), message.payload)
        if kind == "error":
            code = str(headers.get(":error-code", "error"))
            return _error_event(bedrock_error_type(code), code, str(headers.get(":error-message", "")))
        raise EventStreamError(f"event-stream frame of unknown message type {kind!r}")


def _chunk_event(payload: bytes) -> SSEEvent:
    try:
        wrapper = json.loads(payload)
        data = base64.b64decode(wrapper["bytes"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise EventStreamError('chunk payload is not {"bytes": base64}') from None
    match = _TYPE_PREFIX.match(data)
    if match is not None and data.endswith(b"}") and b"\n" not in data and b"\r" not in data:
        kind = match.group(1)
    else:  # not the compact JSON Bedrock sends: parse it, and re-encode it on one line
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            raise EventStreamError("chunk is not a JSON event") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
            raise EventStreamError("chunk is not an event object with a type")
        if not _EVENT_TYPE.fullmatch(parsed["type"]):  # it becomes an SSE line: no CR/LF, no surrogate
            raise EventStreamError("chunk's type is not an event name")
        kind, data = parsed["type"].encode(), dumps(parsed).encode()
    return SSEEvent(raw=b"event: " + kind + b"\ndata: " + data + b"\n\n", event=kind.decode(), data=data)


def _exception_event(name: str, payload: bytes) -> SSEEvent:
    try:
        parsed = json.loads(payload) if payload else {}
    except (ValueError, RecursionError):
        parsed = {}
    text = parsed.get("message", parsed.get("Message", "")) if isinstance(parsed, dict) else ""
    return _error_event(bedrock_error_type(name), name, text if isinstance(text, str) else "")


def _error_event(error_type: str, name: str, message: str) -> SSEEvent:
    said = f": {message[:_MAX_MESSAGE]}" if message else ""
    data = error_body(error_type, f"Bedrock {name or 'error'}{said}")
    return SSEEvent(raw=b"event: error\ndata: " + data + b"\n\n", event="error", data=data)
