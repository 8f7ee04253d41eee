"""The simulator's Anthropic shapes: messages, event streams, errors, and the body checks.

Pure; shared by the dialects that speak Anthropic's body: Anthropic's own ``/v1/messages``
(``tools/simulator.py``), Bedrock's (``sim_bedrock.py``) and Vertex AI's (``sim_vertex.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from trio_balancer.errors import InvalidRequest, error_body, error_type_for_status
from trio_balancer.protocol import events
from trio_balancer.protocol.sse import encode_event
from trio_balancer.protocol.validation import validate_messages_request
from trio_balancer.tools.sim_common import (
    FaultShape,
    Header,
    SimOptions,
    Step,
    StreamShape,
    delta_text,
    output_tokens,
    paced_deltas,
    text,
    tool_input,
)

__all__ = [
    "ANTHROPIC_FAULTS",
    "ANTHROPIC_STREAM",
    "anthropic_body_problem",
    "anthropic_error",
    "anthropic_message",
    "anthropic_stream",
    "anthropic_too_long",
    "tool_names",
    "tool_results",
]


def anthropic_error(status: int) -> dict[str, Any]:
    """A simulated HTTP error's body, in Anthropic's shape."""
    message = f"simulated HTTP {status}"
    return {"type": "error", "error": {"type": error_type_for_status(status), "message": message}}


def anthropic_too_long(tokens: int, window: int) -> tuple[int, list[Header], Any]:
    """Anthropic's real answer to a prompt longer than the window (its wording)."""
    message = f"prompt is too long: {tokens} tokens > {window} maximum"
    return 400, [], {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


ANTHROPIC_FAULTS = FaultShape(error=lambda status: ([], anthropic_error(status)), too_long=anthropic_too_long)
ANTHROPIC_STREAM = StreamShape(
    error_event=encode_event("error", error_body("overloaded_error", "Overloaded (simulated)").decode()),
    event=lambda data: b"event: content_block_delta\ndata: " + data + b"\n\n",
)


def anthropic_body_problem(
    payload: Mapping[str, Any], *, version: str, forbidden: Iterable[str] = (), extra: str = ""
) -> str | None:
    """What a cloud refuses in the Anthropic body it is sent, else None: an ``anthropic_version``
    other than ``version``, a key of ``forbidden`` (said as ``extra`` formats ``{field}``), and
    whatever Anthropic itself refuses."""
    if payload.get("anthropic_version") != version:
        return f"anthropic_version: must be {version}"
    for field in forbidden:
        if field in payload:
            return extra.format(field=field)
    try:
        validate_messages_request({"model": "cloud", **payload})
    except InvalidRequest as exc:
        return str(exc)
    return None


def _delta(opts: SimOptions, i: int) -> bytes:
    return events.encode(events.content_block_delta(0, {"type": "text_delta", "text": delta_text(opts, i)}))


def anthropic_stream(opts: SimOptions, model: str, input_tokens: int) -> Iterator[Step]:
    start: dict[str, Any] = {"id": f"msg_sim_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
                             "content": [], "stop_reason": None, "stop_sequence": None}  # fmt: skip
    if not opts.no_usage:
        start["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
    yield "event", events.encode(events.message_start(start))
    yield "event", events.encode(events.content_block_start(0, {"type": "text", "text": ""}))
    yield "event", events.PING
    if (yield from paced_deltas(opts, ANTHROPIC_STREAM, partial(_delta, opts))):
        return
    yield "event", events.encode(events.content_block_stop(0))
    for t in range(opts.tools):
        yield from _tool_call(opts, t + 1, t)
    stop = {"stop_reason": "tool_use" if opts.tools else "end_turn", "stop_sequence": None}
    usage = None if opts.no_usage else {"output_tokens": output_tokens(opts)}
    yield "event", events.encode(events.message_delta(stop, usage))
    yield "event", events.encode(events.message_stop())


def _tool_call(opts: SimOptions, index: int, t: int) -> Iterator[Step]:
    block = {"type": "tool_use", "id": f"toolu_sim_{t}", "name": opts.tool_name, "input": {}}
    yield "event", events.encode(events.content_block_start(index, block))
    args = json.dumps(tool_input(opts, t))
    for part in (args[:10], args[10:]):
        delta = {"type": "input_json_delta", "partial_json": part}
        yield "event", events.encode(events.content_block_delta(index, delta))
    yield "event", events.encode(events.content_block_stop(index))


def anthropic_message(opts: SimOptions, model: str, input_tokens: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "".join(text(opts, i) for i in range(opts.events))}
    ]
    content += [
        {"type": "tool_use", "id": f"toolu_sim_{t}", "name": opts.tool_name, "input": tool_input(opts, t)}
        for t in range(opts.tools)
    ]
    message: dict[str, Any] = {"id": f"msg_sim_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model, "content": content,
                               "stop_reason": "tool_use" if opts.tools else "end_turn", "stop_sequence": None}  # fmt: skip
    if not opts.no_usage:
        message["usage"] = {"input_tokens": input_tokens, "output_tokens": output_tokens(opts)}
    return message


def tool_results(payload: Mapping[str, Any]) -> str | None:
    """The text of the tool results an Anthropic request's last message carries, else None."""
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    results = (
        [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if isinstance(content, list)
        else []
    )
    if not results:
        return None
    texts = []
    for result in results:
        inner = result.get("content")
        if isinstance(inner, str):
            texts.append(inner)
        elif isinstance(inner, list):
            texts += [
                str(b.get("text", "")) for b in inner if isinstance(b, dict) and b.get("type") == "text"
            ]
    return "\n".join(texts)


def tool_names(payload: Mapping[str, Any], *, openai: bool = False) -> list[str]:
    """The names of the tools a request offers (OpenAI's under ``function``)."""
    tools = payload.get("tools")
    out = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict):
            named = tool.get("function") if openai else tool
            if isinstance(named, dict) and isinstance(named.get("name"), str):
                out.append(named["name"])
    return out
