"""The optional features of a Messages request: each beta flag with the body field it unlocks.

Pure. A feature is what a provider may lack (``config/capabilities.py`` names them the same):
its ``anthropic-beta`` flags and its place in the body travel together, so a request made to fit
a provider loses both or neither. That is the bug behind "context_management: Extra inputs are
not permitted" in other gateways: the flag stripped, the field kept.

Some features change the answer when dropped (a web search the model was asked to run, MCP
servers, code execution, a required output format, a document it was asked to read): a request
that uses one *needs* it, and a provider without it is skipped rather than sent less. The others
are removed by ``feature_drops.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from trio_balancer.protocol.documents import document_kind

__all__ = [
    "FEATURE_BETAS",
    "Need",
    "beta_flags",
    "feature_of_beta",
    "join_betas",
    "needs_of",
    "server_tool_type",
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
