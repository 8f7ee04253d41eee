"""Content blocks, whatever holds them: the text of a ``content`` value. Pure.

A message's, a system message's or a text document's ``content`` is a string or a list of
typed blocks; the rules that turn one into text (folding system messages, documents as
text, system messages converted for OpenAI) read it the same way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["content_text"]


def content_text(content: Any) -> str:
    """The text of a ``content`` value: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    parts = [b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"]
    return "\n\n".join(str(p) for p in parts)
