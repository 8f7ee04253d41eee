"""Google API error bodies (Gemini, Vertex AI) -> Anthropic error bodies. Pure.

Google answers errors as ``{"error": {"code": 429, "message": "...", "status":
"RESOURCE_EXHAUSTED", "details": [...]}}``; Vertex AI sometimes wraps that object in a JSON
list. The ``status`` (a ``google.rpc.Code`` name) says more than the HTTP status: a 400
``FAILED_PRECONDITION`` is the request's fault, a 503 ``UNAVAILABLE`` is the model being busy,
which is Anthropic's ``overloaded_error``. The message is Google's, prefixed with the provider's
name, with anything shaped like a credential taken out (``redaction.scrub``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trio_balancer.errors import error_body, error_type_for_status
from trio_balancer.redaction import scrub

__all__ = [
    "GOOGLE_REASON_TYPES",
    "GOOGLE_STATUS_TYPES",
    "google_error",
    "google_error_message",
    "google_error_object",
    "google_error_object_type",
    "google_error_type",
]

# google.rpc.Code names -> Anthropic error types.
GOOGLE_STATUS_TYPES: Mapping[str, str] = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",  # e.g. "User location is not supported"
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error",
    "DEADLINE_EXCEEDED": "timeout_error",
    "INTERNAL": "api_error",
}
# ErrorInfo reasons that say more than the status: Gemini answers a bad or expired API key
# with 400 INVALID_ARGUMENT, which is the operator's credential, not the request.
GOOGLE_REASON_TYPES: Mapping[str, str] = {
    "API_KEY_INVALID": "authentication_error",
    "API_KEY_EXPIRED": "authentication_error",
    "API_KEY_SERVICE_BLOCKED": "permission_error",
    "API_KEY_HTTP_REFERRER_BLOCKED": "permission_error",
    "API_KEY_IP_ADDRESS_BLOCKED": "permission_error",
    "SERVICE_DISABLED": "permission_error",
    "BILLING_DISABLED": "permission_error",
    "RATE_LIMIT_EXCEEDED": "rate_limit_error",
}
# Longest message passed on: Google's are a sentence or two; a gateway's page is not a message.
MESSAGE_MAX = 2000


def google_error_type(status_name: Any, http_status: Any) -> str:
    """The Anthropic ``error.type`` for a Google error's ``status`` name and HTTP code."""
    if isinstance(status_name, str) and status_name in GOOGLE_STATUS_TYPES:
        return GOOGLE_STATUS_TYPES[status_name]
    if isinstance(http_status, int) and not isinstance(http_status, bool) and http_status >= 400:
        return error_type_for_status(http_status)
    return "api_error"


def google_error_object_type(err: Mapping[str, Any], http_status: Any) -> str:
    """The Anthropic ``error.type`` for a Google error object, wherever it came (an HTTP error
    answer, a 200, a stream's chunk): an ``ErrorInfo`` reason first, then ``status``, then the
    HTTP status (the object's own ``code`` when there is none)."""
    return _reason_type(err) or google_error_type(err.get("status"), http_status)


def google_error_object(parsed: Any) -> dict[str, Any] | None:
    """The ``error`` object of a parsed Google error body (bare or wrapped in a list)."""
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, dict) else None
    return err if isinstance(err, dict) else None


def google_error(status: int, headers: Mapping[str, str], body: bytes, provider: str) -> tuple[str, bytes]:
    """``(error_type, body)`` in Anthropic's shape for a Google HTTP error answer."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    err = google_error_object(parsed)
    if err is None:
        # Not Google's shape (an HTML page from a proxy): its words stay out of our message.
        error_type = error_type_for_status(status)
        said = f"{len(body)} bytes that are not a Google error" if body.strip() else ""
    else:
        error_type = google_error_object_type(err, status)
        said = google_error_message(err)
    text = f"provider {provider!r} answered HTTP {status}" + (f": {said}" if said else "")
    return error_type, error_body(error_type, text)


def _reasons(err: Mapping[str, Any]) -> list[str]:
    """The ``ErrorInfo`` reasons of a Google error object (any other shape: none)."""
    details = err.get("details")
    listed = details if isinstance(details, list) else []
    return [
        d["reason"]
        for d in listed
        if isinstance(d, dict) and isinstance(d.get("reason"), str) and d["reason"]
    ]


def _reason_type(err: Mapping[str, Any]) -> str | None:
    return next((GOOGLE_REASON_TYPES[r] for r in _reasons(err) if r in GOOGLE_REASON_TYPES), None)


def google_error_message(err: Mapping[str, Any]) -> str:
    """A Google error object's message, its status and reasons, safe to show."""
    message = str(err.get("message") or "")[:MESSAGE_MAX]
    codes = [str(err["status"])] if isinstance(err.get("status"), str) and err["status"] else []
    codes += _reasons(err)  # ErrorInfo's reason says what went wrong in one word (API_KEY_INVALID...)
    if codes:
        message = f"{message} ({', '.join(codes)})" if message else ", ".join(codes)
    return scrub(message)
