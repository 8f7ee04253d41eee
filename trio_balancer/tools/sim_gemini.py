"""The simulator's Gemini dialect: ``generateContent`` requests checked, answers in Gemini's shape.

:func:`gemini_answer` answers on the exchange ``tools/simulator.py`` hands it; the rest is
pure. ``/v1beta/models/{model}:{action}`` with
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
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs

from trio_balancer.protocol.schema_dialect import GEMINI_KEYS
from trio_balancer.tools.sim_common import (
    Exchange,
    FaultShape,
    Header,
    Request,
    SimOptions,
    SimState,
    Step,
    StreamShape,
    after_tool_results,
    delta_text,
    fault_preamble,
    google_error,
    json_object,
    output_tokens,
    paced_deltas,
    tool_input,
)

__all__ = [
    "SIM_GEMINI_SIGNATURE",
    "gemini_answer",
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
    """Gemini's error answer (Google's shape, Gemini's usual messages)."""
    return google_error(status, _ERRORS, message, reason)


def _too_long(tokens: int, window: int) -> tuple[int, list[Header], Any]:
    message = f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({window})."
    return 400, [], gemini_error_answer(400, message)


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\r\n\r\n"


GEMINI_FAULTS = FaultShape(error=lambda status: ([], gemini_error_answer(status)), too_long=_too_long)
GEMINI_STREAM = StreamShape(error_event=_sse(json.dumps(gemini_error_answer(503)).encode()), event=_sse)


async def gemini_answer(sim: SimState, ex: Exchange, request: Request) -> None:
    """generateContent / streamGenerateContent / countTokens, with an API key, as Gemini answers."""
    model, action = gemini_route(request.path) or ("", "")
    key = request.headers.get("x-goog-api-key") or (parse_qs(request.query).get("key") or [""])[0]
    refused = gemini_key_problem(key, sim.gemini_keys)
    if refused is not None:
        return await ex.send(*refused)
    opts = sim.defaults.with_headers(request.headers)
    payload = json_object(request.body)
    counting = action == "countTokens"
    problem = gemini_body_problem(payload, model, counting=counting)
    if problem is not None:
        return await ex.send(400, gemini_error_answer(400, problem))
    assert payload is not None
    body = payload.get("generateContentRequest", payload) if counting else payload
    input_tokens = max(1, len(json.dumps(body, ensure_ascii=False)) // 4)
    window = 0 if counting else sim.windows.get(model, opts.context_window)
    if await fault_preamble(ex, opts, GEMINI_FAULTS, input_tokens=input_tokens, window=window):
        return
    if counting:
        return await ex.send(200, {"totalTokens": input_tokens})
    opts = after_tool_results(opts, gemini_tool_results(payload), gemini_tool_names(payload))
    thinking = bool(
        ((payload.get("generationConfig") or {}).get("thinkingConfig") or {}).get("includeThoughts")
    )
    if action == "generateContent":  # one JSON: the stream's faults have no bytes to spoil
        whole = attrs.evolve(opts, bad_utf8=False, huge_event=0)
        message = _message(gemini_stream(whole, model, input_tokens, thinking=thinking))
        return await ex.send(200, message, trickle=opts.trickle)
    await ex.send_stream(opts, gemini_stream(opts, model, input_tokens, thinking=thinking))


def gemini_stream(opts: SimOptions, model: str, input_tokens: int, *, thinking: bool) -> Iterator[Step]:
    """Gemini's chunks: [a thought], one text part per delta, the calls together, the finish.

    After thinking (and always on ``gemini-3*``, which signs every first call) the first part
    made carries a ``thoughtSignature`` that a next turn must give back.
    """
    rid = f"sim-{uuid.uuid4().hex[:12]}"
    usage = {"promptTokenCount": input_tokens, "candidatesTokenCount": 0}
    if thinking:
        usage["thoughtsTokenCount"] = 12
    signature = thinking or model.startswith("gemini-3")

    def chunk(parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        data = gemini_chunk(parts, model=model, response_id=rid, usage=usage, finish=finish)
        if opts.no_usage:
            data.pop("usageMetadata")
        return _sse(json.dumps(data, ensure_ascii=False).encode())

    per = max(1, output_tokens(attrs.evolve(opts, tools=0)) // max(1, opts.events))

    def delta(i: int) -> bytes:
        part: dict[str, Any] = {"text": delta_text(opts, i)}
        if signature and i == 0 and not opts.tools:
            part["thoughtSignature"] = SIM_GEMINI_SIGNATURE
        usage["candidatesTokenCount"] += per
        return chunk([part])

    if thinking:
        yield (
            "event",
            chunk([{"text": "**Reading the request** The user wants the next step.", "thought": True}]),
        )
    if (yield from paced_deltas(opts, GEMINI_STREAM, delta)):
        return
    calls: list[dict[str, Any]] = []
    for t in range(opts.tools):
        call: dict[str, Any] = {"name": opts.tool_name, "args": tool_input(opts, t)}
        if model.startswith("gemini-3"):
            call["id"] = f"call_sim_{t}"
        calls.append({"functionCall": call})
    if calls and signature:
        calls[0]["thoughtSignature"] = SIM_GEMINI_SIGNATURE
    usage["candidatesTokenCount"] += 12 * len(calls)
    yield "event", chunk(calls, opts.finish or "STOP")


def _message(chunks: Iterator[Step]) -> dict[str, Any]:
    """The whole answer of ``generateContent``: the stream's parts in one response."""
    parts: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for kind, data in chunks:
        if kind != "event":
            continue
        raw = data() if callable(data) else data
        last = json.loads(raw.removeprefix(b"data: "))
        if "error" in last:
            return last
        parts += last["candidates"][0]["content"]["parts"]
    last["candidates"][0]["content"]["parts"] = parts
    return last


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
