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
answers; :func:`vertex_error` reads both (Google's with ``protocol/google_errors.py``, which
Gemini's adapter shares).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from trio_balancer.protocol.events import dumps
from trio_balancer.protocol.google_errors import google_error, google_error_object
from trio_balancer.protocol.upstream_errors import anthropic_error_in_200, error_type_of

__all__ = [
    "VERTEX_VERSION",
    "vertex_body",
    "vertex_count_path",
    "vertex_error",
    "vertex_error_in_200",
    "vertex_path",
]

VERTEX_VERSION = "vertex-2023-10-16"


def vertex_body(payload: Mapping[str, Any], *, keep_model: bool = False) -> bytes:
    """The rawPredict body for an Anthropic-format ``payload`` (already fitted)."""
    body = {k: v for k, v in payload.items() if keep_model or k != "model"}
    body.setdefault("anthropic_version", VERTEX_VERSION)
    return dumps(body).encode()


def _model_root(project: str, region: str) -> str:
    return f"/v1/projects/{project}/locations/{region}/publishers/anthropic/models"


def vertex_path(project: str, region: str, model_id: str, *, stream: bool) -> str:
    """The model's predict path; the id escaped, so that a client's model name (sent as the id
    when no target renames it) cannot add segments, ``..``, a query or an action (found by attack)."""
    action = "streamRawPredict" if stream else "rawPredict"
    return f"{_model_root(project, region)}/{quote(model_id, safe='@')}:{action}"


def vertex_count_path(project: str, region: str) -> str:
    return f"{_model_root(project, region)}/count-tokens:rawPredict"


def vertex_error(status: int, headers: Mapping[str, str], body: bytes, provider: str) -> tuple[str, bytes]:
    """An HTTP error answer of Vertex's as ``(Anthropic error type, Anthropic error body)``:
    the model's own errors are Anthropic's already; Vertex's are Google's."""
    anthropic_type = error_type_of(body)
    if anthropic_type is not None:
        return anthropic_type, body
    return google_error(status, headers, body, provider)


def vertex_error_in_200(body: bytes, provider: str) -> tuple[str, bytes] | None:
    """An error object Vertex answered with a 200 (Anthropic's or Google's, found by attack),
    as ``(Anthropic error type, Anthropic error body)``; None for an answer."""
    found = anthropic_error_in_200(body, provider)
    if found is not None:
        return found
    try:
        err = google_error_object(json.loads(body))
    except (ValueError, RecursionError):
        return None
    if err is None:
        return None
    code = err.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else 502
    return google_error(status, {}, body, provider)
