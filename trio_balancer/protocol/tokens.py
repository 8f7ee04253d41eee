"""Token estimates for when a provider reports none. Pure, dependency-free, CJK-aware.

No tokenizer of current Claude models is published, so this is a small linear model over
character classes, fitted to Claude's public tokenizer (the one Anthropic shipped in its SDK
up to 0.38) on tests/data/token_corpus.jsonl (code, English, Markdown, JSON, Chinese,
Japanese, Korean, emoji; built by bench/token_corpus.py). Per piece of text:

- a run of ASCII letters: 1 token, plus 1 per 3 letters beyond the fifth (common words are one
  token with their leading space);
- a run of digits: 1 token per 2 digits; a run of ASCII punctuation: 1 per 3 characters;
- each newline 1.2; indentation after it 1 per 12 spaces; single spaces are free;
- Han characters (and full-width forms): 0.9 each; kana 2.0; hangul 1.4;
- emoji and other characters outside the BMP: 3.5 each; other non-ASCII letters 1 per 1.2.

Measured error on that corpus (tests/test_tokens.py keeps it honest): -0.8 % over all text;
mean per kind within +-17 %. Current models tokenize somewhat differently, so treat the number
as an estimate, which is what the ledger calls it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["IMAGE_TOKENS", "MESSAGE_OVERHEAD", "TOOL_OVERHEAD", "estimate_request", "estimate_text"]

_PIECES = re.compile(
    r"(?P<word>[A-Za-z]+)"
    r"|(?P<digits>[0-9]+)"
    r"|(?P<space>[ \t]+)"
    r"|(?P<newline>(?:\r?\n[ \t]*)+|\r)"
    r"|(?P<punct>[!-/:-@\[-`{-~]+)"
    r"|(?P<kana>[\u3040-\u30ff]+)"
    r"|(?P<han>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]+)"
    r"|(?P<hangul>[\uac00-\ud7af]+)"
    r"|(?P<astral>[\U00010000-\U0010ffff]+)"
    r"|(?P<other>[^\x00-\x7f]+)"
    r"|(?P<control>[\x00-\x1f\x7f])"
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
            tokens += 1.0 + max(0, n - 5) / 3.0
        elif kind == "space":
            continue
        elif kind == "punct":
            tokens += n / 3.0
        elif kind == "newline":
            lines = m.group().count("\n") or 1
            tokens += 1.2 * lines + (n - lines) / 12.0
        elif kind == "digits":
            tokens += n / 2.0
        elif kind == "han":
            tokens += 0.9 * n
        elif kind == "kana":
            tokens += 2.0 * n
        elif kind == "hangul":
            tokens += 1.4 * n
        elif kind == "astral":
            tokens += 3.5 * n
        elif kind == "other":
            tokens += n / 1.2
        else:  # control
            tokens += 1.0
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
