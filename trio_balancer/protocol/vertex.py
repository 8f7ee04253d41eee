"""Claude on Google Vertex AI: the request body, the paths, the error answers. Pure.

Vertex runs Anthropic's Messages API as a publisher model, called the way Anthropic's own
Vertex SDK client calls it: the model moves from the body into the path
(``/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{id}:streamRawPredict``,
or ``:rawPredict`` for a JSON answer), ``anthropic_version`` is ``vertex-2023-10-16``, and
``stream`` stays in the body. The answers are Anthropic's, SSE and JSON, byte for byte.
Counting tokens is ``.../models/count-tokens:rawPredict`` with the model left in the body.

Errors come either in Anthropic's shape (the model's own: overloaded, invalid request) or in
Google's (``{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": ...}}``,
sometimes wrapped in a list), for quota, permission and routing errors that Vertex itself
answers; :func:`vertex_error` reads both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trio_balancer.errors import error_body, error_type_for_status
from trio_balancer.protocol.events import dumps
from trio_balancer.protocol.upstream_errors import error_type_of

__all__ = [
    "GOOGLE_ERROR_TYPES",
    "VERTEX_VERSION",
    "google_error_message",
    "google_error_type",
    "vertex_body",
    "vertex_count_path",
    "vertex_error",
    "vertex_path",
]

VERTEX_VERSION = "vertex-2023-10-16"
# google.rpc.Code names as Anthropic error types.
GOOGLE_ERROR_TYPES: Mapping[str, str] = {
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error",
    "DEADLINE_EXCEEDED": "timeout_error",
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "NOT_FOUND": "not_found_error",
    "PERMISSION_DENIED": "permission_error",
    "UNAUTHENTICATED": "authentication_error",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
    "ABORTED": "api_error",
    "CANCELLED": "api_error",
}
_MAX_MESSAGE = 500


def vertex_body(payload: Mapping[str, Any], *, keep_model: bool = False) -> bytes:
    """The rawPredict body for an Anthropic-format ``payload`` (already fitted)."""
    body = {k: v for k, v in payload.items() if keep_model or k != "model"}
    body.setdefault("anthropic_version", VERTEX_VERSION)
    return dumps(body).encode()


def _model_root(project: str, region: str) -> str:
    return f"/v1/projects/{project}/locations/{region}/publishers/anthropic/models"


def vertex_path(project: str, region: str, model_id: str, *, stream: bool) -> str:
    action = "streamRawPredict" if stream else "rawPredict"
    return f"{_model_root(project, region)}/{model_id}:{action}"


def vertex_count_path(project: str, region: str) -> str:
    return f"{_model_root(project, region)}/count-tokens:rawPredict"


def google_error_type(status_name: str, http_status: int | None = None) -> str:
    """A ``google.rpc.Code`` name as an Anthropic error type; unknown ones by HTTP status."""
    if status_name in GOOGLE_ERROR_TYPES:
        return GOOGLE_ERROR_TYPES[status_name]
    return error_type_for_status(http_status) if http_status else "api_error"


def google_error_message(parsed: Any) -> tuple[str, str] | None:
    """``(status name, message)`` of a Google error object (or a list holding one), else None."""
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return None
    error = parsed["error"]
    status = error.get("status")
    message = error.get("message")
    return (
        status if isinstance(status, str) else "",
        message[:_MAX_MESSAGE] if isinstance(message, str) else "",
    )


def vertex_error(status: int, headers: Mapping[str, str], body: bytes, provider: str) -> tuple[str, bytes]:
    """An HTTP error answer of Vertex's as ``(Anthropic error type, Anthropic error body)``."""
    anthropic_type = error_type_of(body)
    if anthropic_type is not None:
        return anthropic_type, body  # the model's own error, already Anthropic's
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    found = google_error_message(parsed)
    if found is None:
        error_type = error_type_for_status(status)
        return error_type, error_body(error_type, f"provider {provider!r} (Vertex AI) answered HTTP {status}")
    name, message = found
    error_type = google_error_type(name, status)
    said = f": {message}" if message else ""
    return error_type, error_body(error_type, f"provider {provider!r} (Vertex AI) {name or status}{said}")
