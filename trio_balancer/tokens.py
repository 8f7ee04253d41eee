"""Token estimates for when a provider reports none. Pure, dependency-free, CJK-aware.

No Claude tokenizer is published, so this is a heuristic fitted to how BPE tokenizers of this
generation split text:

- runs of ASCII letters/digits: about one token per 4 characters (short words are one token);
- ASCII punctuation and symbols: about one token each (``{"":`` in JSON are separate tokens);
- whitespace: folded into the next word, except runs of newlines/indentation (1 per 4);
- CJK ideographs, kana and hangul: about one token per character;
- other letters (accented Latin, Cyrillic, Greek...): about one token per 2 characters;
- emoji and other symbols outside the BMP: about 2 tokens each.

Its error against real counts is measured in tests/test_tokens.py and recorded in the README.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["IMAGE_TOKENS", "MESSAGE_OVERHEAD", "TOOL_OVERHEAD", "estimate_request", "estimate_text"]

_PIECES = re.compile(
    r"(?P<word>[A-Za-z0-9]+)"
    r"|(?P<space>[ \t]+)"
    r"|(?P<newline>[\r\n]+)"
    r"|(?P<punct>[!-/:-@\[-`{-~])"
    r"|(?P<cjk>[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]+)"
    r"|(?P<astral>[\U00010000-\U0010ffff]+)"
    r"|(?P<other>[^\x00-\x7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00010000-\U0010ffff]+)"
    r"|(?P<control>[\x00-\x08\x0b\x0c\x0e-\x1f\x7f])"
)

# Per-item costs of a request's structure, in tokens, roughly what Anthropic's count_tokens
# adds for them beyond their text.
MESSAGE_OVERHEAD = 4
TOOL_OVERHEAD = 12
# Anthropic bills an image at about (width * height) / 750 tokens, capped near 1,600 for the
# largest it accepts unscaled. Without decoding the image we take a typical screenshot's cost.
IMAGE_TOKENS = 1_200


def estimate_text(text: str) -> int:
    tokens = 0.0
    for m in _PIECES.finditer(text):
        kind = m.lastgroup
        n = m.end() - m.start()
        if kind == "word":
            tokens += max(1.0, n / 4.0)
        elif kind == "punct" or kind == "control":
            tokens += 1.0
        elif kind == "cjk":
            tokens += n * 1.0
        elif kind == "astral":
            tokens += n * 2.0
        elif kind == "other":
            tokens += max(1.0, n / 2.0)
        elif kind == "newline":
            tokens += max(1.0, n / 4.0)
        elif kind == "space" and n > 1:
            tokens += n / 4.0  # indentation
    return round(tokens)


def estimate_request(payload: Mapping[str, Any]) -> int:
    """Input tokens of an Anthropic Messages request: system, messages, tools."""
    total = 0
    system = payload.get("system")
    if isinstance(system, str):
        total += estimate_text(system)
    elif isinstance(system, list):
        total += sum(_block(b) for b in system)
    for message in payload.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        total += MESSAGE_OVERHEAD
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_text(content)
        elif isinstance(content, list):
            total += sum(_block(b) for b in content)
    for tool in payload.get("tools") or []:
        if isinstance(tool, Mapping):
            total += TOOL_OVERHEAD + estimate_text(
                json.dumps(tool, ensure_ascii=False, separators=(",", ":"))
            )
    return max(1, total)


def _block(block: Any) -> int:
    if not isinstance(block, Mapping):
        return 0
    kind = block.get("type")
    if kind == "text":
        return estimate_text(str(block.get("text", "")))
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "thinking":
        return estimate_text(str(block.get("thinking", "")))
    if kind == "tool_use":
        return 8 + estimate_text(
            json.dumps(block.get("input", {}), ensure_ascii=False, separators=(",", ":"))
        )
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return 8 + estimate_text(content)
        if isinstance(content, list):
            return 8 + sum(_block(b) for b in content)
        return 8
    if kind == "document":
        source = block.get("source") or {}
        data = source.get("data")
        return estimate_text(data) if source.get("type") == "text" and isinstance(data, str) else IMAGE_TOKENS
    return estimate_text(json.dumps(block, ensure_ascii=False))
