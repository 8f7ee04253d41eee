"""Removing a feature a provider lacks from a request, the rest of the body kept as it was. Pure.

Each feature of ``features.py`` that can go without changing the answer's meaning has one
remover here; the beta flags travel with them in ``upstream/fit.py``. ``without_fields`` is the
last resort for strict servers: top-level fields no capability governs and the provider does
not list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CAPABILITY_FIELDS", "DROPPABLE", "drop_feature", "without_fields"]

# Features whose removal keeps the answer's meaning: removed when the provider lacks them, in
# this order (adaptive thinking reads the effort before the effort goes).
# mcp_servers, container and an output format are only ever dropped empty: a request that uses
# one skips the providers that lack it (see :func:`needs_of`).
DROPPABLE = (
    "context_management", "adaptive_thinking", "effort", "structured_outputs", "mcp_servers",
    "container", "cache_ttl", "cache_scope", "tool_search",
)  # fmt: skip


# Top-level fields a capability governs (kept or removed by its own rule, never by a
# provider's list of body fields).
CAPABILITY_FIELDS = frozenset({"context_management", "output_config", "mcp_servers", "container"})


def without_fields(
    payload: Mapping[str, Any], takes: Callable[[str], bool]
) -> tuple[dict[str, Any], str | None]:
    """``payload`` without the top-level fields a strict provider does not take, and a note.

    A field Claude Code starts sending in its next release is unknown to a strict server
    (pydantic's "Extra inputs are not permitted"); fields a capability governs are left to it.
    """
    unknown = sorted(k for k in payload if k not in CAPABILITY_FIELDS and not takes(k))
    if not unknown:
        return dict(payload), None
    return {k: v for k, v in payload.items() if k not in unknown}, f"fields {', '.join(unknown)} removed"


# thinking budgets for adaptive thinking's effort levels, when a provider takes only "enabled"
_EFFORT_BUDGET = {"low": 2048, "medium": 8192, "high": 16384, "max": 32768}
_MIN_BUDGET = 1024  # Anthropic's minimum budget_tokens


def drop_feature(payload: Mapping[str, Any], feature: str) -> tuple[dict[str, Any], str | None]:
    """``payload`` without ``feature`` (one of :data:`DROPPABLE`), and a note if anything changed."""
    remove = _REMOVERS.get(feature)
    return (dict(payload), None) if remove is None else remove(dict(payload))


def _without_field(
    name: str, *, used_skips: bool
) -> Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]]:
    """A top-level field goes whatever its value (null and empty too: a strict server rejects
    the key), except one in use where using it skips the provider before (``used_skips``)."""

    def remove(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if name in body and not (used_skips and body[name]):
            del body[name]
            return body, f"{name} removed"
        return body, None

    return remove


def _without_effort(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    body, note = _without_output_key(body, "effort")
    turns = _without_turn_effort(body)  # Claude Code >= 2.1.3xx also sets it per turn, on a message
    return body, note or turns


def _without_cache(key: str) -> Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]]:
    def remove(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        changed = _without_cache_key(body, key)
        return body, (f"cache_control.{key} removed ({changed} blocks)" if changed else None)

    return remove


def _without_turn_effort(body: dict[str, Any]) -> str | None:
    """Messages without their own ``output_config.effort`` (the per-turn-control beta)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(
        isinstance(m, dict) and "output_config" in m for m in messages
    ):
        return None
    out = []
    for message in messages:
        if isinstance(message, dict) and "output_config" in message:
            inner, _ = _without_output_key({"output_config": message["output_config"]}, "effort")
            rest = {k: v for k, v in message.items() if k != "output_config"}
            message = {**rest, **inner}
        out.append(message)
    body["messages"] = out
    return "messages[].output_config.effort removed"


def _without_deferred_tools(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Tools without ``defer_loading``, for a provider with no tool search.

    A deferred tool is out of the model's context until the tool search finds it (Claude Code
    sends a ``DeferredToolPlaceholder`` that says "never call this tool"), so one the
    conversation never used goes; one it used (a ``tool_use`` of it, or the search's
    ``tool_reference`` to it) is loaded, and each ``tool_reference`` becomes text.
    """
    tools = body.get("tools")
    if not isinstance(tools, list) or not any(isinstance(t, dict) and "defer_loading" in t for t in tools):
        return body, None
    used = _tools_used(body.get("messages"))
    kept, left = [], 0
    for tool in tools:
        if not (isinstance(tool, dict) and "defer_loading" in tool):
            kept.append(tool)
        elif tool["defer_loading"] and tool.get("name") not in used:
            left += 1
        else:
            kept.append({k: v for k, v in tool.items() if k != "defer_loading"})
    body["tools"] = kept
    if isinstance(body.get("messages"), list):
        body["messages"] = [_references_as_text(m) for m in body["messages"]]
    return body, f"defer_loading removed ({left} deferred tools the conversation never used left out)"


def _tools_used(messages: Any) -> set[str]:
    """Names of the tools a conversation called or its tool search returned."""
    used: set[str] = set()
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                used.add(block["name"])
            inner = block.get("content") if block.get("type") == "tool_result" else None
            for ref in inner if isinstance(inner, list) else ():
                if isinstance(ref, dict) and ref.get("type") == "tool_reference":
                    used.add(str(ref.get("tool_name")))
    return used


def _references_as_text(message: Any) -> Any:
    """A message whose tool results' ``tool_reference`` blocks are text (the tool is loaded)."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return message

    def ref_text(block: Any) -> Any:
        if isinstance(block, dict) and block.get("type") == "tool_reference":
            return {"type": "text", "text": f"Tool loaded: {block.get('tool_name')}"}
        return block

    return {**message, "content": [_in_tool_result(b, ref_text) for b in content]}


def _without_output_key(body: dict[str, Any], key: str) -> tuple[dict[str, Any], str | None]:
    """``output_config`` without ``key`` (a used ``format`` skipped the provider before);
    an ``output_config`` left empty, or null, goes too."""
    if "output_config" not in body:
        return body, None
    output = body["output_config"]
    if isinstance(output, dict) and key in output and not (key == "format" and output[key]):
        output = {k: v for k, v in output.items() if k != key}
        note = f"output_config.{key} removed"
    elif not output:
        note = "output_config removed (empty)"
    else:
        return body, None
    if output:
        body["output_config"] = output
    else:
        del body["output_config"]
    return body, note


def _adaptive_to_budget(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``thinking: {type: adaptive}`` as the older ``enabled`` with a budget from the effort.

    The budget must stay under ``max_tokens``; a request too small for the minimum budget
    is sent without thinking, as the older API would have required.
    """
    thinking = body.get("thinking")
    if not (isinstance(thinking, dict) and thinking.get("type") == "adaptive"):
        return body, None
    output = body.get("output_config")
    effort = output.get("effort") if isinstance(output, dict) else None
    budget = _EFFORT_BUDGET.get(effort if isinstance(effort, str) else "", _EFFORT_BUDGET["high"])
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int):
        budget = min(budget, max_tokens - 1)
    if budget < _MIN_BUDGET:
        del body["thinking"]
        return body, "adaptive thinking removed (max_tokens below the minimum thinking budget)"
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return body, f"adaptive thinking sent as enabled with budget_tokens {budget}"


def _without_cache_key(body: dict[str, Any], key: str) -> int:
    """Remove ``key`` from every ``cache_control`` of ``body`` (copying what it changes); the count."""
    changed = 0

    def clean(block: Any) -> Any:
        nonlocal changed
        control = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(control, dict) and key in control:
            changed += 1
            return {**block, "cache_control": {k: v for k, v in control.items() if k != key}}
        return block

    body.update(clean(body))
    for field in ("system", "tools"):
        if isinstance(body.get(field), list):
            body[field] = [clean(b) for b in body[field]]
    messages = body.get("messages")
    if isinstance(messages, list):
        out = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                message = {**message, "content": [clean(_in_tool_result(b, clean)) for b in content]}
            out.append(message)
        body["messages"] = out
    return changed


def _in_tool_result(block: Any, clean: Callable[[Any], Any]) -> Any:
    """A ``tool_result`` block with ``clean`` applied to the blocks of its content."""
    inner = block.get("content") if isinstance(block, dict) and block.get("type") == "tool_result" else None
    if not isinstance(inner, list):
        return block
    cleaned = [clean(b) for b in inner]
    return (
        block if all(a is b for a, b in zip(cleaned, inner, strict=True)) else {**block, "content": cleaned}
    )


_REMOVERS: Mapping[str, Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]]] = {
    "context_management": _without_field("context_management", used_skips=False),
    "adaptive_thinking": _adaptive_to_budget,
    "effort": _without_effort,
    "structured_outputs": lambda body: _without_output_key(body, "format"),
    "mcp_servers": _without_field("mcp_servers", used_skips=True),
    "container": _without_field("container", used_skips=True),
    "cache_ttl": _without_cache("ttl"),
    "cache_scope": _without_cache("scope"),
    "tool_search": _without_deferred_tools,
}
