"""What kind of Claude Code request this is: a background call, a subagent's turn. Pure.

PLACEHOLDER (issue 17): a minimal version so routing's ``background`` / ``subagent`` conditions
have something to call; the definitions from captured traffic replace this module whole (same
names, same signatures). The rules here, from tests/data/claude_code:

- background: a request on the fast (haiku) model that is no agent turn: it has no tools, or
  a small ``max_tokens`` (<= 1024). 1.0.128's bash path extractor (claude-3-5-haiku, no
  tools, max_tokens 512) and 2.0.77's (claude-haiku-4-5, no tools) are; 2.0.77's haiku
  ``Warmup`` of the file search subagent (11 tools, max_tokens 32000) is not.
- subagent: a request with tools, none of them the one that starts a subagent (``Task`` up to
  2.0.x, ``Agent`` from 2.1): a subagent cannot start another, the main conversation always can.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["is_background", "is_subagent"]

BACKGROUND_MAX_TOKENS = 1024
_SPAWNERS = frozenset({"Task", "Agent"})


def _tool_names(payload: Mapping[str, Any]) -> list[str]:
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    # Client tools only: a server tool (web search...) has a ``type`` and no ``input_schema``.
    return [
        t["name"]
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("name"), str) and ("input_schema" in t or "type" not in t)
    ]


def is_background(payload: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> bool:
    """One of Claude Code's background calls (see the module docstring for the rule)."""
    model = payload.get("model")
    if not isinstance(model, str) or "haiku" not in model:
        return False
    max_tokens = payload.get("max_tokens")
    small = isinstance(max_tokens, int) and max_tokens <= BACKGROUND_MAX_TOKENS
    return not _tool_names(payload) or small


def is_subagent(payload: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> bool:
    """A subagent's request: tools, but not the one that starts a subagent."""
    names = _tool_names(payload)
    return bool(names) and _SPAWNERS.isdisjoint(names)
