"""``role: "system"`` inside ``messages[]``, for an Anthropic-format provider that rejects it. Pure.

Claude Code >= 2.1.153 puts system messages in the middle of a conversation (reminders, mode
changes). Anthropic's API takes them; older Anthropic-compatible servers answer 400. For those
each such message moves to the end of the top-level ``system``, as text that says where in the
conversation it stood, so the model still reads it and knows its place. (OpenAI-compatible
providers get a system message in place: ``convert/request.py``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trio_balancer.protocol.blocks import content_text

__all__ = ["fold_system_messages", "has_system_messages"]


def has_system_messages(payload: Mapping[str, Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "system" for m in payload.get("messages") or ())


def fold_system_messages(payload: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Move every in-conversation system message to the top-level system, its position kept as text."""
    if not has_system_messages(payload):
        return dict(payload), None
    kept: list[Any] = []
    folded: list[dict[str, Any]] = []
    for message in payload.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "system":
            where = f"after message {len(kept)}" if kept else "before the first message"
            text = f"[System message, {where} of the conversation]\n{content_text(message.get('content'))}"
            folded.append({"type": "text", "text": text})
        else:
            kept.append(message)
    system = payload.get("system")
    if isinstance(system, str):
        blocks: list[Any] = [{"type": "text", "text": system}] if system else []
    else:
        blocks = list(system or ())
    body = {**payload, "messages": kept, "system": blocks + folded}
    return body, f"{len(folded)} system message(s) in messages[] moved to the top-level system"
