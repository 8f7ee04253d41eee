"""The simulator's Bedrock dialect: SigV4 checked against test credentials, event-stream frames.

:func:`bedrock_answer` answers on the exchange ``tools/simulator.py`` hands it; the rest is
pure. A request to ``/model/{id}/invoke`` or
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
import uuid
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import unquote

from trio_balancer.protocol.bedrock import EVENT_STREAM_TYPE
from trio_balancer.protocol.cloud_models import anthropic_model_name
from trio_balancer.protocol.tokens import estimate_request
from trio_balancer.tools.sim_anthropic import (
    anthropic_body_problem,
    anthropic_message,
    anthropic_stream,
    tool_names,
    tool_results,
)
from trio_balancer.tools.sim_common import (
    Exchange,
    FaultShape,
    Header,
    Request,
    SimState,
    after_tool_results,
    fault_preamble,
    json_object,
    output_tokens,
)

__all__ = [
    "SIM_AWS_KEYS",
    "SIM_AWS_KEY_ID",
    "SIM_AWS_SECRET",
    "bedrock_answer",
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


def bedrock_error_answer(status: int) -> tuple[list[Header], dict[str, Any]]:
    """Headers and body of a simulated Bedrock HTTP error."""
    name, message = _HTTP_ERRORS.get(status, _HTTP_ERRORS[503 if status >= 500 else 400])
    return [("x-amzn-errortype", f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/")], {
        "message": message
    }


def _too_long(tokens: int, window: int) -> tuple[int, list[Header], Any]:
    """Bedrock's answer to a prompt over the model's window (it says no numbers)."""
    return (
        400,
        [("x-amzn-errortype", "ValidationException")],
        {"message": "Input is too long for requested model."},
    )


BEDROCK_FAULTS = FaultShape(error=bedrock_error_answer, too_long=_too_long)


async def bedrock_answer(sim: SimState, ex: Exchange, request: Request) -> None:
    """InvokeModel[WithResponseStream] and CountTokens, signed, as Bedrock answers them."""
    model_id, action = bedrock_route(request.path) or ("", "")
    ex.headers.append(("x-amzn-requestid", str(uuid.uuid4())))
    problem = check_signature(request.method, request.target, request.headers, request.body, sim.aws_keys)
    if problem is not None:
        name = "UnrecognizedClientException" if "token" in problem.lower() else "InvalidSignatureException"
        return await ex.send(403, {"message": problem}, [("x-amzn-errortype", name)])
    opts = sim.defaults.with_headers(request.headers)
    payload = _body(request.body, counting=action == "count-tokens")
    wrong = "body is not JSON" if payload is None else anthropic_body_problem(
        payload, version="bedrock-2023-05-31", forbidden=("model", "stream"),
        extra="extraneous key [{field}] is not permitted",
    )  # fmt: skip
    if wrong is not None:
        extra = [("x-amzn-errortype", "ValidationException")]
        return await ex.send(400, {"message": f"Malformed input request: {wrong}"}, extra)
    assert payload is not None
    input_tokens = estimate_request(payload)
    model = anthropic_model_name(model_id)
    window = 0 if action == "count-tokens" else sim.windows.get(model, opts.context_window)
    if await fault_preamble(ex, opts, BEDROCK_FAULTS, input_tokens=input_tokens, window=window):
        return
    if action == "count-tokens":
        return await ex.send(200, {"inputTokens": input_tokens})
    opts = after_tool_results(opts, tool_results(payload), tool_names(payload))
    if action == "invoke":
        return await ex.send(200, anthropic_message(opts, model, input_tokens), trickle=opts.trickle)
    metrics = {"inputTokenCount": input_tokens, "outputTokenCount": output_tokens(opts),
               "invocationLatency": 1, "firstByteLatency": 1}  # fmt: skip
    await ex.send_stream(
        opts, anthropic_stream(opts, model, input_tokens),
        frame=partial(sse_to_frame, invocation=metrics), content_type=EVENT_STREAM_TYPE,
    )  # fmt: skip


def _body(body: bytes, *, counting: bool) -> dict[str, Any] | None:
    """The Anthropic body of a request (CountTokens carries it base64 in ``input``), else None."""
    payload = json_object(body)
    if not counting or payload is None:
        return payload
    try:
        inner = json.loads(base64.b64decode(payload["input"]["invokeModel"]["body"]))
    except (KeyError, TypeError, ValueError):
        return None
    return inner if isinstance(inner, dict) else None


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
