"""The simulator's Gemini dialect: ``generateContent`` requests checked, answers in Gemini's shape.

Pure helpers; ``tools/simulator.py`` does the I/O. ``/v1beta/models/{model}:{action}`` with
``streamGenerateContent`` (SSE, each ``data:`` a whole ``GenerateContentResponse``),
``generateContent`` (one JSON) or ``countTokens``. The key comes in ``x-goog-api-key`` (or
``?key=``); a simulator given keys (``Simulator(gemini_keys=...)``) answers any other with the
400 ``API_KEY_INVALID`` Gemini answers, and a request with none with its 403. The request is
held to what Gemini refuses in practice: roles that are not ``user``/``model``, empty parts, a
function response count that differs from the calls it answers, schema keys Gemini's
``Schema`` lacks, and on ``gemini-3*`` models a model turn whose first ``functionCall`` has no
``thoughtSignature``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from trio_balancer.protocol.schema_dialect import GEMINI_KEYS

__all__ = [
    "SIM_GEMINI_SIGNATURE",
    "gemini_body_problem",
    "gemini_chunk",
    "gemini_error_answer",
    "gemini_key_problem",
    "gemini_route",
    "gemini_tool_names",
    "gemini_tool_results",
]

_ROUTE = re.compile(
    r"/v1beta/models/(?P<model>[^/:]+):(?P<action>generateContent|streamGenerateContent|countTokens)"
)
# The signature the simulator puts on the parts it makes after thinking (Gemini's are opaque).
SIM_GEMINI_SIGNATURE = "c2ltLXRob3VnaHQtc2lnbmF0dXJl"
_ERRORS: Mapping[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument. (simulated)"),
    403: ("PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity)."),
    404: ("NOT_FOUND", "models/sim is not found for API version v1beta, or is not supported for generateContent."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details. (simulated)"),
    500: ("INTERNAL", "An internal error has occurred. (simulated)"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}  # fmt: skip


def gemini_route(path: str) -> tuple[str, str] | None:
    """``(model, action)`` of a Gemini model path, else None."""
    m = _ROUTE.fullmatch(path)
    return (m["model"], m["action"]) if m else None


def gemini_error_answer(status: int, message: str | None = None, reason: str | None = None) -> dict[str, Any]:
    name, default = _ERRORS.get(status, _ERRORS[500 if status >= 500 else 400])
    error: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return {"error": error}


def gemini_key_problem(key: str, keys: frozenset[str]) -> tuple[int, dict[str, Any]] | None:
    """The answer to a missing or unknown API key, else None (any key goes when ``keys`` is empty)."""
    if not key:
        return 403, gemini_error_answer(403)
    if keys and key not in keys:
        return 400, gemini_error_answer(
            400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
        )
    return None


def gemini_body_problem(body: Any, model: str, *, counting: bool) -> str | None:
    """What Gemini would refuse in a request body, else None."""
    if counting and isinstance(body, dict) and isinstance(body.get("generateContentRequest"), dict):
        body = body["generateContentRequest"]
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    for key in ("messages", "system", "max_tokens", "stream"):
        if key in body:
            return f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
    if (problem := _pairing_problem(contents, signed=model.startswith("gemini-3"))) is not None:
        return problem
    for tool in body.get("tools") or []:
        for declaration in tool.get("functionDeclarations") or [] if isinstance(tool, dict) else []:
            bad = _schema_problem(declaration.get("parameters"))
            if bad is not None:
                return f"Invalid JSON payload received. Unknown name \"{bad}\" at 'tools[0].function_declarations'"
    return None


def _pairing_problem(contents: list[dict[str, Any]], *, signed: bool) -> str | None:
    for i, content in enumerate(contents):
        calls = [p for p in content["parts"] if isinstance(p, dict) and "functionCall" in p]
        if content["role"] != "model" or not calls:
            continue
        if signed and "thoughtSignature" not in calls[0]:
            return (
                f"Function call is missing a thought_signature in functionCall parts. (contents[{i}].parts)"
            )
        after = contents[i + 1]["parts"] if i + 1 < len(contents) else None
        if after is None:
            continue
        responses = [p for p in after if isinstance(p, dict) and "functionResponse" in p]
        if len(responses) != len(calls):
            return (
                "Please ensure that the number of function response parts is equal to the number of"
                " function call parts of the function call turn."
            )
    return None


def _schema_problem(schema: Any) -> str | None:
    """The first key Gemini's Schema lacks, anywhere in ``schema``."""
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key not in GEMINI_KEYS:
            return str(key)
        children: list[Any] = []
        if key == "properties" and isinstance(value, dict):
            children = list(value.values())
        elif key == "items":
            children = [value]
        elif key == "anyOf" and isinstance(value, list):
            children = value
        for child in children:
            if (bad := _schema_problem(child)) is not None:
                return bad
    return None


def gemini_tool_names(body: Any) -> list[str]:
    """The names of the functions a request declares."""
    tools = body.get("tools") if isinstance(body, dict) else None
    names = []
    for tool in tools if isinstance(tools, list) else []:
        for declaration in (tool.get("functionDeclarations") or []) if isinstance(tool, dict) else []:
            if isinstance(declaration, dict):
                names.append(str(declaration.get("name")))
    return names


def gemini_tool_results(body: Any) -> str | None:
    """The text of the function responses the last content carries, else None."""
    contents = body.get("contents") if isinstance(body, dict) else None
    last = contents[-1] if isinstance(contents, list) and contents else None
    parts = last.get("parts") if isinstance(last, dict) else None
    responses = [
        p["functionResponse"] for p in parts or [] if isinstance(p, dict) and "functionResponse" in p
    ]
    if not responses:
        return None
    return "\n".join(
        json.dumps(r.get("response"), ensure_ascii=False) for r in responses if isinstance(r, dict)
    )


def gemini_chunk(
    parts: list[dict[str, Any]],
    *,
    model: str,
    response_id: str,
    usage: Mapping[str, int],
    finish: str | None = None,
) -> dict[str, Any]:
    """One ``GenerateContentResponse`` as Gemini streams it (usage is a running total)."""
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    metadata = {**usage, "totalTokenCount": sum(usage.values())}
    return {
        "candidates": [candidate],
        "usageMetadata": metadata,
        "modelVersion": model,
        "responseId": response_id,
    }
