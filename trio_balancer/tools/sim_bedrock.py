"""The simulator's Bedrock dialect: SigV4 checked against test credentials, event-stream frames.

Pure helpers; ``tools/simulator.py`` does the I/O. A request to ``/model/{id}/invoke`` or
``/model/{id}/invoke-with-response-stream`` must be signed (SigV4, service ``bedrock``) with a
key the simulator knows (:data:`SIM_AWS_KEYS`; set ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` to the pair to try a config), else the 403 Bedrock answers. Streams
are the simulator's Anthropic events, each wrapped in an event-stream ``chunk`` frame the way
Bedrock wraps them; an error event becomes an ``exception`` frame. Frames are encoded here
(botocore parses event streams but does not write them): prelude, headers, payload, CRC32s.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import struct
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

__all__ = [
    "SIM_AWS_KEYS",
    "SIM_AWS_KEY_ID",
    "SIM_AWS_SECRET",
    "bedrock_error_answer",
    "bedrock_route",
    "check_signature",
    "event_frame",
    "exception_frame",
    "sse_to_frame",
]

SIM_AWS_KEY_ID = "AKIASIMULATOR0000001"
SIM_AWS_SECRET = "sim/secret/key/for/tests/only/0000000000"
SIM_AWS_KEYS: Mapping[str, str] = {SIM_AWS_KEY_ID: SIM_AWS_SECRET}
_ROUTE = re.compile(r"/model/(?P<model>[^/]+)/(?P<action>invoke|invoke-with-response-stream|count-tokens)")
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
# HTTP status -> (x-amzn-errortype, message), as Bedrock answers them.
_HTTP_ERRORS: Mapping[int, tuple[str, str]] = {
    400: ("ValidationException", "Malformed input request (simulated)"),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The provided model identifier is invalid."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request (simulated)"),
    424: ("ModelErrorException", "The model failed to process the request (simulated)"),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error (simulated)"),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
_STREAM_EXCEPTIONS: Mapping[str, str] = {
    "overloaded_error": "serviceUnavailableException",
    "rate_limit_error": "throttlingException",
}


def bedrock_route(path: str) -> tuple[str, str] | None:
    """``(model id, action)`` of a Bedrock runtime path, else None."""
    m = _ROUTE.fullmatch(path)
    return (unquote(m["model"]), m["action"]) if m else None


def check_signature(
    method: str, target: str, headers: Mapping[str, str], body: bytes, keys: Mapping[str, str] = SIM_AWS_KEYS
) -> str | None:
    """What is wrong with the request's SigV4 signature, or None when it verifies."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    m = _AUTH.fullmatch(headers.get("authorization", "").strip())
    if m is None:
        return "Missing Authentication Token"
    secret = keys.get(m["key"])
    if secret is None:
        return "The security token included in the request is invalid."
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(m["date"]):
        return "Signature date does not match x-amz-date"
    signed = m["signed"].split(";")
    request = AWSRequest(
        method=method,
        url=f"http://{headers.get('host', '')}{target}",
        data=body,
        headers={n: headers.get(n, "") for n in signed if n != "host"},
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(m["key"], secret, headers.get("x-amz-security-token")), m["service"], m["region"]
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, m["signature"]):
        return "The request signature we calculated does not match the signature you provided."
    return None


def bedrock_error_answer(status: int) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Headers and body of a simulated Bedrock HTTP error."""
    name, message = _HTTP_ERRORS.get(status, _HTTP_ERRORS[503 if status >= 500 else 400])
    return [("x-amzn-errortype", f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/")], {
        "message": message
    }


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value


def _frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    encoded = b"".join(_header(n, v) for n, v in headers.items())
    total = 16 + len(encoded) + len(payload)
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def event_frame(event_json: bytes) -> bytes:
    """One Anthropic event's JSON as Bedrock's ``chunk`` frame."""
    payload = json.dumps({"bytes": base64.b64encode(event_json).decode()}).encode()
    return _frame(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}, payload
    )


def exception_frame(name: str, message: str) -> bytes:
    payload = json.dumps({"message": message}).encode()
    return _frame(
        {":exception-type": name, ":content-type": "application/json", ":message-type": "exception"}, payload
    )


def sse_to_frame(sse: bytes, invocation: Mapping[str, int] | None = None) -> bytes:
    """A simulated SSE event as the frame Bedrock would send for it (pings have none)."""
    data = b"".join(line[5:].strip() for line in sse.split(b"\n") if line.startswith(b"data:"))
    if not data:
        return b""
    try:
        parsed = json.loads(data)
    except ValueError:  # a fault (x-sim-huge-event) sends bytes that are no JSON: wrapped as they are
        return event_frame(data)
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if kind == "ping":
        return b""
    if kind == "error":
        error = parsed.get("error") or {}
        name = _STREAM_EXCEPTIONS.get(str(error.get("type")), "modelStreamErrorException")
        return exception_frame(name, str(error.get("message", "")))
    if kind == "message_stop" and invocation is not None:
        data = json.dumps({**parsed, "amazon-bedrock-invocationMetrics": dict(invocation)}).encode()
    return event_frame(data)
