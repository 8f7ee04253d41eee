"""What one provider accepts of a Claude Code request: its capabilities, and presets for them.

A request is made to fit each provider before it is sent (``upstream/fit.py``): a feature the
provider lacks is removed from the ``anthropic-beta`` header and the body together, or, where
removing it would change the answer (server tools, MCP servers, code execution, structured
output, documents it cannot read), the provider is skipped in the plan. These classes say what
each provider lacks; the defaults are Anthropic's own API, which lacks nothing.

A provider's capabilities are its ``kind``'s preset, then the ``preset`` it names, then its
``[providers.capabilities]`` table, each key overriding the one before. The presets hold what
the field knows of each family (see the README's "Claude Code across providers").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from trio_balancer.config import spec
from trio_balancer.protocol.documents import MODE_TAKES, takes_document
from trio_balancer.protocol.features import Need
from trio_balancer.protocol.schema_dialect import DIALECTS

__all__ = [
    "ALL",
    "DOCUMENT_MODES",
    "KIND_PRESETS",
    "PRESETS",
    "Capabilities",
    "preset_for",
]

ALL = "*"  # in a list of beta flags or server tools: every one
# How a provider takes `document` blocks: as Anthropic's blocks; as OpenAI `file` content
# parts (PDFs) and text; as text only (text documents; a PDF skips the provider); not at all.
DOCUMENT_MODES = tuple(MODE_TAKES)


@attrs.frozen
class Capabilities:
    """One provider's capabilities; every default is what Anthropic's own API accepts."""

    # anthropic-beta flags the provider accepts; ["*"]: every flag.
    betas: tuple[str, ...] = attrs.field(default=(ALL,), metadata=spec.strings())
    # Top-level body fields it takes besides those the keys below govern; ["*"]: every one. A
    # strict server is sent only these (a field Claude Code adds next month is unknown to it).
    body_fields: tuple[str, ...] = attrs.field(default=(ALL,), metadata=spec.strings())
    # Body fields and shapes (each removed with its beta flags when lacking).
    context_management: bool = attrs.field(default=True, metadata=spec.boolean())
    effort: bool = attrs.field(default=True, metadata=spec.boolean())  # output_config.effort
    adaptive_thinking: bool = attrs.field(default=True, metadata=spec.boolean())  # thinking.type adaptive
    structured_outputs: bool = attrs.field(default=True, metadata=spec.boolean())  # output_config.format
    mcp_servers: bool = attrs.field(default=True, metadata=spec.boolean())
    container: bool = attrs.field(default=True, metadata=spec.boolean())
    cache_ttl: bool = attrs.field(default=True, metadata=spec.boolean())  # cache_control.ttl "1h"
    cache_scope: bool = attrs.field(default=True, metadata=spec.boolean())  # cache_control.scope
    # Deferred tools (`defer_loading`, found by a tool search; `tool_reference` results).
    tool_search: bool = attrs.field(default=True, metadata=spec.boolean())
    # Server tool type prefixes it runs ("web_search", "web_fetch", "code_execution", ...); ["*"]: all.
    server_tools: tuple[str, ...] = attrs.field(default=(ALL,), metadata=spec.strings())
    # role "system" inside messages[] (Claude Code >= 2.1.153).
    system_messages: bool = attrs.field(default=True, metadata=spec.boolean())
    documents: str = attrs.field(default="native", metadata=spec.string(choices=DOCUMENT_MODES))
    # The family whose thinking signatures the provider makes and verifies: Anthropic's for
    # Anthropic's API, the provider's own name for a third party (the presets set it).
    thinking_family: str = attrs.field(default="anthropic", metadata=spec.string())
    # OpenAI-compatible reasoning models (DeepSeek, Kimi, ...): prior thinking goes back as
    # `reasoning_content` on assistant turns, which they require on tool-call turns.
    reasoning_content: bool = attrs.field(default=False, metadata=spec.boolean())
    schema_dialect: str = attrs.field(default="json-schema", metadata=spec.string(choices=DIALECTS))
    # Remove Claude Code's `x-anthropic-billing-header` text from the system prompt: its
    # per-request value would defeat the provider's prompt cache, and it means nothing there.
    strip_billing_header: bool = attrs.field(default=False, metadata=spec.boolean())
    # Has POST /v1/messages/count_tokens; without it the balancer answers with its estimate.
    count_tokens: bool = attrs.field(default=True, metadata=spec.boolean())
    # Tokens of input plus output the provider's models hold; 0: unknown.
    context_window: int = attrs.field(default=0, metadata=spec.integer(lo=0))

    def takes_field(self, name: str) -> bool:
        return ALL in self.body_fields or name in self.body_fields

    def accepts_beta(self, flag: str) -> bool:
        return ALL in self.betas or flag in self.betas

    def runs_server_tool(self, tool_type: str) -> bool:
        return ALL in self.server_tools or any(tool_type.startswith(p) for p in self.server_tools)

    def lacks(self, need: Need) -> str | None:
        """Why this provider cannot be sent a request with ``need``, or None if it can."""
        if need.what == "server_tools":
            ok = self.runs_server_tool(need.detail)
            return None if ok else f"does not run the server tool {need.detail} ({need.where})"
        if need.what == "documents":
            ok = takes_document(self.documents, need.detail)
            return (
                None
                if ok
                else f"cannot read a {need.detail} document ({need.where}; documents = {self.documents!r})"
            )
        if getattr(self, need.what):
            return None
        return f"does not support {need.where}"

    def first_lack(self, needs: Iterable[Need]) -> str | None:
        return next((why for need in needs if (why := self.lacks(need)) is not None), None)


# Header-only flags every Claude-Code-serving Anthropic-format provider takes or ignores.
_BASIC_BETAS = (
    "claude-code-20250219",
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
)
# The Messages API's fields before the betas of 2025 (what a strict older server takes).
_CORE_FIELDS = (
    "model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream",
    "temperature", "top_k", "top_p", "tools", "tool_choice", "thinking",
)  # fmt: skip
# Third-party servers that speak Anthropic's format (DeepSeek's, Kimi's, GLM's, MiniMax's
# /anthropic endpoints, older self-hosted ones): the core API, none of the newer fields.
_ANTHROPIC_COMPATIBLE: Mapping[str, Any] = {
    "betas": _BASIC_BETAS,
    "body_fields": _CORE_FIELDS,
    "context_management": False,
    "effort": False,
    "adaptive_thinking": False,
    "structured_outputs": False,
    "mcp_servers": False,
    "container": False,
    "cache_ttl": False,
    "cache_scope": False,
    "tool_search": False,
    "server_tools": (),
    "system_messages": False,
    "documents": "text",
    "thinking_family": "",  # set to the provider's name: its signatures are its own
    # Every third party, and so every preset but Anthropic's: the header is Anthropic's billing
    # attribution and means nothing elsewhere, while its per-request `cch=` at the very front
    # of the prompt gives prefix-caching servers (DeepSeek, Kimi, Fireworks, llama.cpp, sglang)
    # 0 % cache hits (claude-code#68900; the fix sglang, higress, new-api made). Anthropic keeps
    # it; so should a relay in front of Anthropic's own API (set it false there).
    "strip_billing_header": True,
    "count_tokens": False,
}
# An OpenAI-compatible server: the request is converted, so only what conversion can carry.
_OPENAI: Mapping[str, Any] = {
    **_ANTHROPIC_COMPATIBLE,
    "betas": (),
    "body_fields": (ALL,),  # conversion carries only the fields it knows
    "system_messages": True,  # a system message in place is OpenAI's own format
}
# Claude on a cloud (Bedrock, Vertex): Anthropic's models and signatures, but the cloud's own
# API surface: no MCP connector, no code-execution containers, no Files API, and beta flags
# checked against a list (Bedrock refuses an unknown `anthropic_beta` value with a 400). The
# flags below are the ones both document for current Claude models; widen `betas` per
# provider when the cloud adds one. Thinking signatures are Anthropic's on every cloud (a
# signed block moves between them and Anthropic's API), so `thinking_family` stays "anthropic".
_CLOUD_BETAS = (
    *_BASIC_BETAS,
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "token-efficient-tools-2025-02-19",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "tool-search-tool-2025-10-19",
    "effort-2025-11-24",
)
_CLAUDE_ON_A_CLOUD: Mapping[str, Any] = {
    "betas": _CLOUD_BETAS,
    "mcp_servers": False,
    "container": False,
    "structured_outputs": False,
    "cache_scope": False,
}
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "anthropic": {},
    "anthropic-compatible": _ANTHROPIC_COMPATIBLE,
    "openai-compatible": _OPENAI,
    "openai": {**_OPENAI, "documents": "file"},  # OpenAI itself reads PDFs as file parts
    "deepseek": {**_OPENAI, "reasoning_content": True, "context_window": 128_000},
    "kimi": {**_OPENAI, "reasoning_content": True, "context_window": 256_000},
    "gemini-openai": {
        **_OPENAI,
        "schema_dialect": "gemini",
        "documents": "file",
        "context_window": 1_048_576,
    },
    "bedrock": {**_CLAUDE_ON_A_CLOUD, "server_tools": ()},
    # Vertex runs Anthropic's web search tool (Google's docs, "Claude on Vertex AI": web search).
    "vertex": {**_CLAUDE_ON_A_CLOUD, "server_tools": ("web_search",)},
    # Gemini's own API, converted (protocol/convert/gemini_*.py): only what conversion carries.
    "gemini": {
        **_OPENAI,
        "schema_dialect": "gemini",
        "documents": "file",
        "system_messages": False,  # folded into the system instruction before conversion
        "count_tokens": True,  # models/{m}:countTokens
        "context_window": 1_048_576,
    },
}
# Presets that describe a kind's own API (its adapter converts or signs for it); the others
# describe servers reached with kind "anthropic" or "openai".
KIND_PRESETS = ("bedrock", "vertex", "gemini")
_PRESET_OF_KIND = {
    "anthropic": "anthropic",
    "openai": "openai-compatible",
    "bedrock": "bedrock",
    "vertex": "vertex",
    "gemini": "gemini",
}


def preset_for(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The capability values a provider row starts from: its kind's preset, then its own ``preset``.

    Called by the config parser with the row's values read so far (``kind``, ``preset``,
    ``name``), before its ``capabilities`` table overrides any of them.
    """
    values = dict(PRESETS[_PRESET_OF_KIND.get(row["kind"], "anthropic")])
    values.update(PRESETS[row.get("preset") or _PRESET_OF_KIND.get(row["kind"], "anthropic")])
    if values.get("thinking_family") == "":
        values["thinking_family"] = row["name"]  # a third party's signatures are its own
    return values
