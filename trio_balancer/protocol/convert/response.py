"""OpenAI Chat Completions response (non-stream) -> Anthropic Message. Pure."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from trio_balancer.protocol.convert.blocks import nonneg_int
from trio_balancer.protocol.convert.errors import ConversionError
from trio_balancer.protocol.convert.stream import STOP_REASONS, content_parts, find_usage

__all__ = ["to_anthropic_message"]


def to_anthropic_message(body: Any, *, model: str, sign: Callable[[], str] | None = None) -> dict[str, Any]:
    """The Anthropic message for an OpenAI chat completion; ``sign`` signs its thinking blocks
    (see ``stream.py``), else their signature is empty."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ConversionError("the upstream answer has no choices")
    choice = body["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise ConversionError("the upstream answer's first choice has no message")
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": sign() if sign else ""})
    for kind, text in content_parts(message.get("content")):
        if kind == "text":
            content.append({"type": "text", "text": text})
        else:
            content.append({"type": "thinking", "thinking": text, "signature": sign() if sign else ""})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise ConversionError(
                f"tool call {function.get('name')!r} has arguments that are not JSON"
            ) from None
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": parsed if isinstance(parsed, dict) else {"value": parsed},
            }
        )
    reason = STOP_REASONS.get(str(choice.get("finish_reason") or ""), "end_turn")
    if isinstance(refusal, str) and refusal:
        reason = "refusal"
    elif reason == "end_turn" and message.get("tool_calls"):
        reason = "tool_use"
    usage = find_usage(body) or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = nonneg_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out_usage: dict[str, int] = {
        "input_tokens": max(0, nonneg_int(usage.get("prompt_tokens")) - cached),
        "output_tokens": nonneg_int(usage.get("completion_tokens")),
    }
    if cached:
        out_usage["cache_read_input_tokens"] = cached
    upstream_id = body.get("id")
    return {
        "id": f"msg_{upstream_id}"
        if isinstance(upstream_id, str) and upstream_id
        else f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": out_usage,
    }
