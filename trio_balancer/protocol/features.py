"""The optional features of a Messages request: each beta flag with the body field it unlocks.

Pure. A feature is what a provider may lack (``config/capabilities.py`` names them the same):
its ``anthropic-beta`` flags and its place in the body travel together, so a request made to fit
a provider loses both or neither. That is the bug behind "context_management: Extra inputs are
not permitted" in other gateways: the flag stripped, the field kept.

Some features change the answer when dropped (a web search the model was asked to run, MCP
servers, code execution, a required output format, a document it was asked to read): a request
that uses one *needs* it, and a provider without it is skipped rather than sent less.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from trio_balancer.protocol.documents import document_kind

__all__ = [
    "DROPPABLE",
    "FEATURE_BETAS",
    "Need",
    "beta_flags",
    "drop_feature",
    "feature_of_beta",
    "join_betas",
    "needs_of",
    "server_tool_type",
    "without_fields",
]

# Each feature's beta flag prefixes (a flag is "<name>-<date>"; the date changes, the name not).
FEATURE_BETAS: Mapping[str, tuple[str, ...]] = {
    "context_management": ("context-management-",),
    "effort": ("effort-",),
    "structured_outputs": ("structured-outputs-",),
    "mcp_servers": ("mcp-client-",),
    "container": ("code-execution-", "skills-"),
    "cache_ttl": ("extended-cache-ttl-",),
    "cache_scope": ("prompt-caching-scope-",),
    "tool_search": ("advanced-tool-use-", "tool-search-tool-"),
}
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


def feature_of_beta(flag: str) -> str | None:
    for feature, prefixes in FEATURE_BETAS.items():
        if flag.startswith(prefixes):
            return feature
    return None


def beta_flags(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The request's beta flags in order, from every ``anthropic-beta`` header (comma lists)."""
    flags: list[str] = []
    for name, value in headers:
        if name.lower() == b"anthropic-beta":
            flags += [f.strip() for f in value.decode("latin-1").split(",") if f.strip()]
    return flags


def join_betas(flags: Iterable[str]) -> bytes:
    return ",".join(flags).encode("latin-1")


def server_tool_type(tool: Any) -> str | None:
    """The type of a tool the provider runs or defines (web search, bash...), None for a client tool."""
    if not isinstance(tool, dict) or "input_schema" in tool:
        return None
    kind = tool.get("type")
    return kind if isinstance(kind, str) and kind != "custom" else None


@attrs.frozen
class Need:
    """Something the request cannot lose: the capability it takes, and where the request uses it.

    ``what`` is the capability (``server_tools``, ``mcp_servers``, ``container``,
    ``structured_outputs``, ``documents``); ``detail`` the tool type or document kind
    (``pdf``, ``text``, ``url``, ``file``); ``where`` the field path, for a client's 400.
    """

    what: str
    detail: str
    where: str


def needs_of(payload: Mapping[str, Any]) -> tuple[Need, ...]:
    """What of ``payload`` a provider must have to be sent it; one pass over the parts that matter."""
    needs: list[Need] = []
    for i, tool in enumerate(payload.get("tools") or ()):
        kind = server_tool_type(tool)
        if kind is not None:
            needs.append(Need("server_tools", kind, f"tools[{i}]"))
    if payload.get("mcp_servers"):
        needs.append(Need("mcp_servers", "mcp_servers", "mcp_servers"))
    if payload.get("container"):
        needs.append(Need("container", "container", "container"))
    output = payload.get("output_config")
    if isinstance(output, dict) and output.get("format"):
        needs.append(Need("structured_outputs", "format", "output_config.format"))
    seen: set[str] = set()
    for where, block in _document_blocks(payload):
        kind = document_kind(block)
        if kind not in seen:
            seen.add(kind)
            needs.append(Need("documents", kind, where))
    return tuple(needs)


def _document_blocks(payload: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for i, message in enumerate(payload.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "document":
                yield f"messages[{i}].content[{j}]", block
            elif block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                for k, inner in enumerate(block["content"]):
                    if isinstance(inner, dict) and inner.get("type") == "document":
                        yield f"messages[{i}].content[{j}].content[{k}]", inner


# -- removing a feature the provider lacks (each keeps the rest of the body as it was) ------

# thinking budgets for adaptive thinking's effort levels, when a provider takes only "enabled"
_EFFORT_BUDGET = {"low": 2048, "medium": 8192, "high": 16384, "max": 32768}
_MIN_BUDGET = 1024  # Anthropic's minimum budget_tokens


def drop_feature(payload: Mapping[str, Any], feature: str) -> tuple[dict[str, Any], str | None]:
    """``payload`` without ``feature`` (one of :data:`DROPPABLE`), and a note if anything changed."""
    body = dict(payload)
    if feature in ("context_management", "mcp_servers", "container"):
        # A field the provider lacks goes whatever its value (null and empty too: a strict
        # server rejects the key); a used mcp_servers or container skipped the provider before.
        if feature in body and (feature == "context_management" or not body[feature]):
            del body[feature]
            return body, f"{feature} removed"
    elif feature in ("effort", "structured_outputs"):
        body, note = _without_output_key(body, "effort" if feature == "effort" else "format")
        if feature == "effort":  # Claude Code >= 2.1.3xx also sets it per turn, on a message
            turns = _without_turn_effort(body)
            note = note or turns
        return body, note
    elif feature == "adaptive_thinking":
        return _adaptive_to_budget(body)
    elif feature == "tool_search":
        return _without_deferred_tools(body)
    elif feature in ("cache_ttl", "cache_scope"):
        key = "ttl" if feature == "cache_ttl" else "scope"
        changed = _without_cache_key(body, key)
        if changed:
            return body, f"cache_control.{key} removed ({changed} blocks)"
    return body, None


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
