"""``document`` blocks for providers that cannot read all of them. Pure.

A provider declares how it takes documents (``Capabilities.documents``): ``native`` (every
kind, as Anthropic's blocks), ``file`` (PDFs as OpenAI ``file`` content parts, text documents
as text), ``text`` (text documents as text; nothing else), ``none``. A document it cannot take
skips it in the plan; a text document it takes as text becomes a text block here, titled, so
the model still sees which document it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trio_balancer.protocol.blocks import content_text

__all__ = ["MODE_TAKES", "document_as_text", "document_kind", "documents_as_text", "takes_document"]

# What each mode takes, of the kinds :func:`document_kind` tells apart.
MODE_TAKES: Mapping[str, frozenset[str]] = {
    "native": frozenset({"pdf", "text", "url", "file"}),
    "file": frozenset({"pdf", "text"}),
    "text": frozenset({"text"}),
    "none": frozenset(),
}


def document_kind(block: Mapping[str, Any]) -> str:
    """``pdf`` (base64 data), ``text`` (plain text or content blocks), ``url`` or ``file`` (Files API)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind in ("text", "content"):
        return "text"
    if kind in ("url", "file"):
        return str(kind)
    return "pdf"


def takes_document(mode: str, kind: str) -> bool:
    return kind in MODE_TAKES.get(mode, frozenset())


def document_as_text(block: Mapping[str, Any]) -> str:
    """A text document's content as one text, headed by its title and context when given."""
    source = block.get("source") or {}
    if source.get("type") == "content":
        body = content_text(source.get("content"))
    else:
        body = str(source.get("data", ""))
    head = [f"Document: {block['title']}"] if block.get("title") else []
    if block.get("context"):
        head.append(f"Context: {block['context']}")
    return "\n".join([*head, body]) if head else body


def _is_text_document(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "document" and document_kind(block) == "text"


def _as_text_block(block: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "text", "text": document_as_text(block)}
    if "cache_control" in block:
        out["cache_control"] = block["cache_control"]
    return out


def documents_as_text(payload: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Every text document (in messages and tool results) as a text block."""
    count = 0

    def blocks(content: list[Any]) -> list[Any]:
        nonlocal count
        out = []
        for block in content:
            if _is_text_document(block):
                count += 1
                block = _as_text_block(block)
            elif isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, list) and any(map(_is_text_document, inner)):
                    block = {**block, "content": blocks(inner)}
            out.append(block)
        return out

    messages = []
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            message = {**message, "content": blocks(content)}
        messages.append(message)
    if not count:
        return dict(payload), None
    return {**payload, "messages": messages}, f"{count} text document(s) sent as text"
