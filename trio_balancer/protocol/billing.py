"""Claude Code's billing block in the system prompt: found, made stable, or removed. Pure.

Claude Code (>= 2.1.29) puts a line like
``x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=cli; cch=1a2b3;`` into the
system prompt: usually a text block of its own at ``system[0]``, sometimes the first line of
the identity block, and in later versions after other text. Anthropic's API reads it for
billing attribution. Its ``cch=`` value is recomputed for every request in some versions
(2.1.181 leaves it out unless it believes it talks to api.anthropic.com), and 2.1.222 adds
``cc_prev_req=``, the id of the previous request: either makes two otherwise identical
requests differ, and makes the start of the prompt differ turn to turn.

Two rules follow (``protocol/dedup.py`` and ``upstream/fit.py`` apply them):

- :func:`without_billing_volatile`: for signatures only, the header's volatile values left
  out, so identical requests share a flight and a cached answer;
- :func:`strip_billing_header`: for providers that are not Anthropic, the header's text
  removed from the system prompt (it means nothing to them, and a per-request value at the
  very front defeats their prefix cache: 0 % hits, claude-code#68900).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BILLING_PREFIX",
    "VOLATILE_FIELDS",
    "billing_line",
    "strip_billing_header",
    "without_billing_volatile",
]

BILLING_PREFIX = "x-anthropic-billing-header:"
# The header's fields whose value changes from one request to the next.
VOLATILE_FIELDS = ("cch", "cc_prev_req")
STRIP_NOTE = "system without Claude Code's billing header"

# The header is a line of its own: at the start of the text or after a newline (a user who
# quotes it mid-sentence has not sent one). The line is matched with the newline after it,
# or, as the last line, with the one before it: the text around it stays as it was.
_P = re.escape(BILLING_PREFIX)
_LINE = re.compile(rf"^{_P}[^\n]*\n|(?:^|\n){_P}[^\n]*\Z", re.MULTILINE)
# A value is one token: what follows it on the line, past a space, is the prompt's own text.
_VOLATILE = re.compile(rf"[ \t]*\b(?:{'|'.join(VOLATILE_FIELDS)})=[^;\s]*;?")


def billing_line(payload: Mapping[str, Any]) -> str | None:
    """The first billing header line in the request's system prompt, or None."""
    for text in _system_texts(payload.get("system")):
        m = _LINE.search(text)
        if m is not None:
            return m.group().strip("\n")
    return None


def without_billing_volatile(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payload`` with the billing header's volatile values left out: what a signature hashes.

    Never sent anywhere. The same object when there is nothing to leave out.
    """
    system = payload.get("system")
    stable = _map_texts(system, _stable_text)
    return payload if stable is system else {**payload, "system": stable}


def strip_billing_header(payload: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """``payload`` without the billing header's text in its top-level system prompt.

    A text block left empty is removed (Anthropic-format servers reject empty text blocks);
    its ``cache_control`` goes to the block before it, or, for a first block, to the next one
    without its own, so the request keeps its cache breakpoints. A system prompt left empty
    is removed. Returns the payload unchanged and None when there is no header.
    """
    system = payload.get("system")
    if isinstance(system, str):
        text = _LINE.sub("", system)
        if text == system:
            return payload, None
        rest = {k: v for k, v in payload.items() if k != "system"}
        return ({**rest, "system": text} if text.strip() else rest), STRIP_NOTE
    if not isinstance(system, list) or not any(_has_line(b) for b in system):
        return payload, None
    blocks = _strip_blocks(system)
    rest = {k: v for k, v in payload.items() if k != "system"}
    return ({**rest, "system": blocks} if blocks else rest), STRIP_NOTE


def _strip_blocks(system: list[Any]) -> list[Any]:
    """The system blocks without the billing lines; a removed block's breakpoint kept."""
    blocks: list[Any] = []
    orphan: Any = None  # the cache_control of a removed first block, for the next one
    for block in system:
        if not _has_line(block):
            if orphan is not None and _is_text(block) and "cache_control" not in block:
                block, orphan = {**block, "cache_control": orphan}, None
            blocks.append(block)
            continue
        text = _LINE.sub("", block["text"])
        if text.strip():
            blocks.append({**block, "text": text})
            continue
        control = block.get("cache_control")
        if control is None:
            continue
        if blocks:
            if isinstance(blocks[-1], Mapping) and "cache_control" not in blocks[-1]:
                blocks[-1] = {**blocks[-1], "cache_control": control}
        else:
            orphan = control
    return blocks


def _stable_text(text: str) -> str:
    if BILLING_PREFIX not in text:
        return text
    return _LINE.sub(lambda m: _VOLATILE.sub("", m.group()), text)


def _map_texts(system: Any, change: Any) -> Any:
    """``system`` with ``change`` applied to each of its texts; the same object if none changed."""
    if isinstance(system, str):
        new = change(system)
        return system if new == system else new
    if not isinstance(system, list):
        return system
    out = [({**b, "text": change(b["text"])} if _is_text(b) else b) for b in system]
    if all(not _is_text(b) or n["text"] == b["text"] for b, n in zip(system, out, strict=True)):
        return system
    return out


def _system_texts(system: Any) -> list[str]:
    if isinstance(system, str):
        return [system]
    if isinstance(system, list):
        return [b["text"] for b in system if _is_text(b)]
    return []


def _is_text(block: Any) -> bool:
    return isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str)


def _has_line(block: Any) -> bool:
    return _is_text(block) and _LINE.search(block["text"]) is not None
