"""Content blocks, whatever holds them: the text of a ``content`` value. Pure.

A message's, a system message's or a text document's ``content`` is a string or a list of
typed blocks; the rules that turn one into text (folding system messages, documents as
text, system messages converted for OpenAI) read it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["content_text", "has_cache_control"]


def has_cache_control(payload: Mapping[str, Any]) -> bool:
    """Whether the request marks anything for prompt caching (top level, system, tools or any
    message block): a converted request says what of that its target cannot keep."""
    if "cache_control" in payload:
        return True
    system = payload.get("system")
    blocks: list[Any] = list(system) if isinstance(system, list) else []
    tools = payload.get("tools")
    blocks += tools if isinstance(tools, list) else []
    messages = payload.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks += content
    return any(isinstance(b, dict) and "cache_control" in b for b in blocks)


def content_text(content: Any) -> str:
    """The text of a ``content`` value: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    parts = [b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"]
    return "\n\n".join(str(p) for p in parts)
