"""What routing conditions look at in a request, found once from the parsed payload. Pure.

:func:`facts_of` walks the already-parsed payload's structure (the tool list, each message's
block types), never its text, so it costs microseconds on a 100 KB Claude Code request. The
input size is estimated from the body's length instead of with ``tokens.estimate_request``,
which reads every character (12-16 ms on a 116 KB Claude Code body: bench/RESULTS.md, "Issue 17"):

    tokens ~= (body bytes - base64 image/document data) / BYTES_PER_TOKEN + IMAGE_TOKENS each

On every captured Claude Code request (tests/data/claude_code) the body is 4.04-4.2 bytes per
token of ``estimate_request``'s count, so this is within a few per cent of it there, a little
high (a ``min_input_tokens`` route takes such a request slightly early). Text with fewer bytes
per token comes out low: CJK scripts (about 3.3 bytes a token) by up to a fifth, a pasted log
of digits and punctuation (about 2.9) by a quarter (tests/test_route_conditions.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from trio_balancer.protocol import request_kind
from trio_balancer.protocol.features import server_tool_type
from trio_balancer.protocol.tokens import IMAGE_TOKENS

__all__ = ["BYTES_PER_TOKEN", "RequestFacts", "facts_of"]

BYTES_PER_TOKEN = 4.0
_MEDIA = ("image", "document")
_THINKING_ON = ("enabled", "adaptive")


@attrs.frozen
class RequestFacts:
    """One request as routing conditions see it."""

    model: str
    thinking: bool = False  # thinking enabled (``enabled`` or ``adaptive``)
    input_tokens: int = 0  # estimated (see the module docstring)
    images: bool = False  # an image or document block anywhere in the messages
    tools: frozenset[str] = frozenset()  # client tools' names
    server_tools: frozenset[str] = frozenset()  # server tools' types (``web_search_20250305``)
    background: bool = False
    subagent: bool = False
    client: str = ""  # the client key's name, or the client's identity
    headers: Mapping[str, str] = attrs.field(factory=dict)  # lower-case names; repeats joined by ", "


def facts_of(
    payload: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]], *, client: str = "", body_bytes: int
) -> RequestFacts:
    """The facts of a request whose body (``body_bytes`` long) parsed to ``payload``."""
    headers = tuple(headers)
    tools: set[str] = set()
    server: set[str] = set()
    for tool in payload.get("tools") or ():
        kind = server_tool_type(tool)
        if kind is not None:
            server.add(kind)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            tools.add(tool["name"])
    media, media_bytes = _media(payload)
    thinking = payload.get("thinking")
    model = payload.get("model")
    return RequestFacts(
        model=model if isinstance(model, str) else "",
        thinking=isinstance(thinking, dict) and thinking.get("type") in _THINKING_ON,
        input_tokens=max(1, round(max(0, body_bytes - media_bytes) / BYTES_PER_TOKEN) + media * IMAGE_TOKENS),
        images=media > 0,
        tools=frozenset(tools),
        server_tools=frozenset(server),
        background=request_kind.is_background(payload, headers),
        subagent=request_kind.is_subagent(payload, headers),
        client=client,
        headers=_header_map(headers),
    )


def _media(payload: Mapping[str, Any]) -> tuple[int, int]:
    """How many image and document blocks the messages hold (tool results too), and the bytes
    of their base64 data."""
    count = size = 0
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind in _MEDIA:
                count, size = count + 1, size + _data_bytes(block)
            elif kind == "tool_result" and isinstance(inner := block.get("content"), list):
                for b in inner:
                    if isinstance(b, dict) and b.get("type") in _MEDIA:
                        count, size = count + 1, size + _data_bytes(b)
    return count, size


def _data_bytes(block: Mapping[str, Any]) -> int:
    source = block.get("source")
    data = source.get("data") if isinstance(source, dict) and source.get("type") == "base64" else None
    return len(data) if isinstance(data, str) else 0


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1").strip()
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
