"""Anthropic Messages request -> OpenAI Chat Completions request. Pure.

Order matters in OpenAI's format: an assistant message's ``tool_calls`` must be followed by
one ``role: tool`` message per call before anything else. Anthropic puts the results inside
the next user message, together with any text, so each user message is split: tool results
first (in the order given), then whatever else the user said.

Reasoning models that read their earlier reasoning back (DeepSeek's thinking mode, Kimi:
``RequestOptions.reasoning_content``) get each assistant message's thinking text as
``reasoning_content``, whichever family thought it: the point is the thread of thought, and
plain text is what they take. DeepSeek requires it on every assistant message between two user
messages in which the model called a tool ("For turns that do perform tool calls, the
reasoning_content must be fully passed back to the API in all subsequent requests", else 400);
such a message with no thinking text (it came from a model that did not think, or only
redacted) gets :data:`NO_REASONING`, since an empty string is refused as missing.

Fields with no OpenAI equivalent are dropped and reported in ``Converted.dropped`` so the
caller can log them at debug; nothing is silently rewritten into something else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs

from trio_balancer.protocol.blocks import content_text, has_cache_control
from trio_balancer.protocol.documents import document_as_text, document_kind

__all__ = ["NO_REASONING", "Converted", "RequestOptions", "effort_for_budget", "to_openai", "user_digest"]

# reasoning_content for a tool-calling turn whose thinking is unknown: DeepSeek V4 refuses ""
# as "Missing `reasoning_content`" and takes a single space (NousResearch/hermes-agent#17341).
NO_REASONING = " "


@attrs.frozen
class RequestOptions:
    # Newer OpenAI models take max_completion_tokens; most compatible servers take max_tokens.
    max_tokens_field: str = "max_tokens"
    # Map Anthropic `thinking` to `reasoning_effort` (OpenAI o-series, some compatible servers).
    reasoning_effort: bool = False
    # PDF documents as OpenAI `file` content parts (OpenAI's own API, Gemini's); else only
    # text documents cross, as text (the plan skips a provider for a PDF it cannot take).
    pdf_file_parts: bool = False
    # Prior thinking back as `reasoning_content` on assistant messages (DeepSeek, Kimi...).
    reasoning_content: bool = False


@attrs.frozen
class Converted:
    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


def effort_for_budget(budget: int) -> str:
    """Anthropic thinking budgets to OpenAI's three effort levels."""
    if budget < 4096:
        return "low"
    if budget < 16384:
        return "medium"
    return "high"


def to_openai(
    payload: Mapping[str, Any], *, model: str, options: RequestOptions = RequestOptions()
) -> Converted:
    dropped: list[str] = []
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if system:
        text = system if isinstance(system, str) else _join_text(system, "system", dropped)
        if text:
            messages.append({"role": "system", "content": text})
    for i, message in enumerate(payload.get("messages") or []):
        role = message.get("role")
        content = message.get("content")
        if role == "assistant":
            messages.append(_assistant(content, dropped, i, options.reasoning_content))
        elif role == "system":  # Claude Code >= 2.1.153: a system message in place, OpenAI's own way
            messages.append({"role": "system", "content": content_text(content)})
        else:
            messages.extend(_user(content, dropped, i, options))

    if options.reasoning_content:
        _reasoning_on_tool_turns(messages)
    body: dict[str, Any] = {"model": model, "messages": messages}
    if "max_tokens" in payload:
        body[options.max_tokens_field] = payload["max_tokens"]
    for key in ("temperature", "top_p"):
        if key in payload:
            body[key] = payload[key]
    if payload.get("stop_sequences"):
        body["stop"] = list(payload["stop_sequences"])
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        body["user"] = user_digest(metadata["user_id"])
    if payload.get("stream"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # or the upstream reports no usage
    tools = payload.get("tools")
    if tools:
        converted = [_tool(t, dropped) for t in tools]
        body["tools"] = [t for t in converted if t is not None]
        if not body["tools"]:
            del body["tools"]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and "tools" in body:
        kind = choice.get("type")
        if kind == "auto":
            body["tool_choice"] = "auto"
        elif kind == "any":
            body["tool_choice"] = "required"
        elif kind == "none":
            body["tool_choice"] = "none"
        elif kind == "tool" and choice.get("name"):
            body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        if choice.get("disable_parallel_tool_use"):
            body["parallel_tool_calls"] = False
    thinking = payload.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        if options.reasoning_effort:
            budget = thinking.get("budget_tokens")
            body["reasoning_effort"] = effort_for_budget(budget) if isinstance(budget, int) else "medium"
        else:
            dropped.append("thinking")
    for key in payload:
        if key not in _MAPPED:
            dropped.append(key)
    if has_cache_control(payload):
        dropped.append("cache_control")  # OpenAI caches prompts by itself; the marks have no equivalent
    return Converted(body=body, dropped=tuple(dropped))


def user_digest(user_id: str) -> str:
    """A stable short stand-in for ``metadata.user_id`` in OpenAI's ``user``.

    Claude Code's ids are ~160 characters; OpenAI takes at most 64 and OpenRouter 128. The
    same id always gives the same digest (the provider's abuse and cache keys keep working),
    and the id itself does not leave.
    """
    return "u-" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


_MAPPED = frozenset(
    {
        "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences",
        "metadata", "stream", "tools", "tool_choice", "thinking",
    }
)  # fmt: skip


def _join_text(blocks: Any, where: str, dropped: list[str]) -> str:
    parts = []
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            dropped.append(f"{where}.{block.get('type') if isinstance(block, dict) else 'non-block'}")
    return "\n\n".join(parts)


def _image_part(block: Mapping[str, Any], dropped: list[str]) -> dict[str, Any] | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        dropped.append(f"image.source.{source.get('type')}")
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _file_part(block: Mapping[str, Any]) -> dict[str, Any]:
    """A base64 PDF as OpenAI's ``file`` content part."""
    source = block.get("source") or {}
    data = f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data', '')}"
    name = block.get("title") or "document.pdf"
    return {"type": "file", "file": {"filename": str(name), "file_data": data}}


def _user(content: Any, dropped: list[str], i: int, options: RequestOptions) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            part = _image_part(block, dropped)
            if part:
                parts.append(part)
        elif kind == "tool_result":
            text, images = _tool_result_content(block.get("content"), dropped, options)
            if block.get("is_error"):
                text = f"Error: {text}" if text else "Error"
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
            )
            # Tool messages carry text only; images a tool returned go to the user turn after.
            parts.extend(images)
        elif kind == "document" and document_kind(block) == "text":
            parts.append({"type": "text", "text": document_as_text(block)})
        elif kind == "document" and document_kind(block) == "pdf" and options.pdf_file_parts:
            parts.append(_file_part(block))
        else:
            dropped.append(f"messages[{i}].content.{kind}")
    out = tool_messages
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _tool_result_content(
    content: Any, dropped: list[str], options: RequestOptions
) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text, and the parts a tool message cannot carry (images, PDFs), which
    go to the user turn after it (Claude Code's Read returns a PDF as a document block)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for block in content:
        kind = document_kind(block) if block.get("type") == "document" else None
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "image":
            part = _image_part(block, dropped)
            if part:
                images.append(part)
        elif kind == "text":
            texts.append(document_as_text(block))
        elif kind == "pdf" and options.pdf_file_parts:
            images.append(_file_part(block))
        else:
            dropped.append(f"tool_result.content.{block.get('type')}")
    return "\n\n".join(texts), images


def _assistant(content: Any, dropped: list[str], i: int, reasoning: bool) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": json.dumps(block.get("input", {}), ensure_ascii=False),
                    },
                }
            )
        elif kind == "thinking" and reasoning:
            if block.get("thinking"):
                thoughts.append(str(block["thinking"]))
        else:  # thinking, redacted_thinking, server tool blocks: nothing to send back
            dropped.append(f"messages[{i}].content.{kind}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if message["content"] is None and not calls:
        message["content"] = ""
    if thoughts:
        message["reasoning_content"] = "\n\n".join(thoughts)
    return message


def _reasoning_on_tool_turns(messages: list[dict[str, Any]]) -> None:
    """Every assistant message between two user messages where a tool was called carries
    ``reasoning_content``: its thinking, else :data:`NO_REASONING`."""
    span: list[dict[str, Any]] = []
    for message in [*messages, {"role": "user"}]:  # the sentinel ends the last span
        if message["role"] == "assistant":
            span.append(message)
        elif message["role"] == "user":
            if any("tool_calls" in m for m in span):
                for m in span:
                    m.setdefault("reasoning_content", NO_REASONING)
            span = []


def _tool(tool: Mapping[str, Any], dropped: list[str]) -> dict[str, Any] | None:
    if "input_schema" not in tool:  # Anthropic server tools (web search, bash...) have no schema
        dropped.append(f"tools.{tool.get('type') or tool.get('name')}")
        return None
    function: dict[str, Any] = {"name": tool.get("name", ""), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}
