"""Anthropic Messages request -> Gemini ``generateContent`` request body. Pure.

The body goes to ``POST /v1beta/models/{model}:generateContent`` (or
``:streamGenerateContent?alt=sse``): the model and the stream choice are in the URL, so
neither is in the body. The mapping:

- ``system`` and the system messages Claude Code sends in place go to ``systemInstruction``;
- ``user`` stays ``user``, ``assistant`` becomes ``model``; consecutive contents of one role
  are merged (Gemini wants the roles to alternate);
- ``tool_use`` is a ``functionCall`` (its id kept), ``tool_result`` a ``functionResponse`` with
  the same id and the name of the call it answers, in a ``user`` content;
- a thinking block whose signature we minted from a Gemini ``thoughtSignature``
  (``protocol/gemini.py``'s prefix, see ``gemini_stream.py``) gives that signature back on the
  part after it in the same model turn, where Gemini put it; any other thinking block is
  another family's and is dropped. Gemini 3 answers 400 to a model turn whose first
  ``functionCall`` carries no signature, so one that has none (history from another provider)
  gets :data:`SKIP_SIGNATURE`, the value Google documents for exactly that case.

Fields with no Gemini equivalent are dropped and listed in ``GeminiRequest.dropped``.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from trio_balancer.protocol.blocks import content_text, has_cache_control
from trio_balancer.protocol.documents import document_as_text, document_kind
from trio_balancer.protocol.gemini import thought_signature_of
from trio_balancer.protocol.schema_dialect import clean_tools

__all__ = [
    "SKIP_SIGNATURE",
    "GeminiRequest",
    "to_gemini",
]

# "You can set the thought signature to this value to skip validation" (Gemini API docs,
# thought signatures: for function calls not made by Gemini, e.g. history from another model).
SKIP_SIGNATURE = "skip_thought_signature_validator"
# A tool_result whose tool_use is not in the history still needs a function name.
UNKNOWN_TOOL = "unknown_tool"

_TOOL_CHOICE_MODES = {"auto": "AUTO", "any": "ANY", "tool": "ANY", "none": "NONE"}
_MAPPED = frozenset(
    {
        "model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k",
        "stop_sequences", "stream", "tools", "tool_choice", "thinking",
    }
)  # fmt: skip


@attrs.frozen
class GeminiRequest:
    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


def to_gemini(payload: Mapping[str, Any]) -> GeminiRequest:
    """The Gemini body for an Anthropic request (tool schemas cleaned to Gemini's dialect)."""
    payload, _note = clean_tools(payload, "gemini")
    dropped: list[str] = []
    system_parts = _system_parts(payload.get("system"), dropped)
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> name, for the functionResponse
    for i, message in enumerate(payload.get("messages") or []):
        if not isinstance(message, dict):
            dropped.append(f"messages[{i}]")
            continue
        role, content = message.get("role"), message.get("content")
        if role == "system":  # Claude Code >= 2.1.153 sends some system text in place
            text = content_text(content)
            if text:
                system_parts.append({"text": text})
        elif role == "assistant":
            _append(contents, "model", _model_parts(content, names, dropped, i))
        else:
            _append(contents, "user", _user_parts(content, names, dropped, i))
    for content in contents:
        if content["role"] == "model":
            _sign_first_call(content["parts"])
    body: dict[str, Any] = {"contents": contents}
    if system_parts:
        body["systemInstruction"] = {"parts": system_parts}
    tools = _tools(payload.get("tools"), dropped)
    if tools:
        body["tools"] = [{"functionDeclarations": tools}]
        config = _tool_config(payload.get("tool_choice"))
        if config:
            body["toolConfig"] = config
    generation = _generation_config(payload)
    if generation:
        body["generationConfig"] = generation
    dropped.extend(key for key in payload if key not in _MAPPED)
    if has_cache_control(payload):
        dropped.append("cache_control")  # Gemini caches implicitly; the marks have no equivalent
    return GeminiRequest(body=body, dropped=tuple(dropped))


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return  # Gemini refuses a content with no parts
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _system_parts(system: Any, dropped: list[str]) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"text": system}] if system else []
    parts = []
    for block in system if isinstance(system, list) else []:
        if isinstance(block, dict) and block.get("type") == "text":
            if block.get("text"):
                parts.append({"text": str(block["text"])})
        else:
            dropped.append(f"system.{block.get('type') if isinstance(block, dict) else 'non-block'}")
    return parts


def _generation_config(payload: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for ours, theirs in (
        ("max_tokens", "maxOutputTokens"),
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
    ):
        if ours in payload:
            config[theirs] = payload[ours]
    if payload.get("stop_sequences"):
        config["stopSequences"] = list(payload["stop_sequences"])
    thinking = payload.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled" and isinstance(thinking, dict):
        budget = thinking.get("budget_tokens")
        config["thinkingConfig"] = {
            "thinkingBudget": budget if isinstance(budget, int) else -1,
            "includeThoughts": True,
        }
    elif kind == "adaptive":
        config["thinkingConfig"] = {"thinkingBudget": -1, "includeThoughts": True}  # -1: dynamic
    return config


def _tools(tools: Any, dropped: list[str]) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict) or "input_schema" not in tool:
            # Server tools (web search, tool search, bash...) have no schema and no equivalent.
            name = tool.get("type") or tool.get("name") if isinstance(tool, dict) else "non-tool"
            dropped.append(f"tools.{name}")
            continue
        declaration: dict[str, Any] = {"name": str(tool.get("name", ""))}
        if tool.get("description"):
            declaration["description"] = str(tool["description"])
        schema = tool["input_schema"]
        # An object with no properties is "no parameters"; Gemini refuses it spelled out.
        if isinstance(schema, dict) and (schema.get("properties") or schema.get("type") != "object"):
            declaration["parameters"] = schema
        out.append(declaration)
    return out


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICE_MODES:
        return None
    config: dict[str, Any] = {"mode": _TOOL_CHOICE_MODES[choice["type"]]}
    if choice["type"] == "tool" and choice.get("name"):
        config["allowedFunctionNames"] = [str(choice["name"])]
    return {"functionCallingConfig": config}


# -- content -------------------------------------------------------------------------------------


def _media_part(block: Mapping[str, Any], dropped: list[str], where: str) -> dict[str, Any] | None:
    """An image or document block as an ``inlineData``/``fileData``/text part (None: dropped)."""
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    assert isinstance(source, dict)
    kind = block.get("type")
    if kind == "document" and document_kind(block) == "text":
        return {"text": document_as_text(block)}
    if source.get("type") == "base64":
        default = "application/pdf" if kind == "document" else "image/png"
        media = str(source.get("media_type") or default)
        return {"inlineData": {"mimeType": media, "data": str(source.get("data", ""))}}
    if source.get("type") == "url" and source.get("url"):
        url = str(source["url"])
        data: dict[str, Any] = {"fileUri": url}
        mime = mimetypes.guess_type(urlsplit(url).path)[0]
        if kind == "document" and not mime:
            mime = "application/pdf"
        if mime:
            data["mimeType"] = mime
        return {"fileData": data}
    dropped.append(f"{where}.{kind}.source.{source.get('type')}")
    return None


def _user_parts(content: Any, names: Mapping[str, str], dropped: list[str], i: int) -> list[dict[str, Any]]:
    """A user message's parts: function responses first (in order), then what else it says."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    responses: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if block.get("text"):
                parts.append({"text": str(block["text"])})
        elif kind in ("image", "document"):
            part = _media_part(block, dropped, f"messages[{i}].content")
            if part:
                parts.append(part)
        elif kind == "tool_result":
            response, extra = _function_response(block, names, dropped)
            responses.append(response)
            parts.extend(extra)  # images a tool returned go beside the responses
        else:
            dropped.append(f"messages[{i}].content.{kind}")
    return responses + parts


def _function_response(
    block: Mapping[str, Any], names: Mapping[str, str], dropped: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    inner = block.get("content")
    texts: list[str] = []
    extra: list[dict[str, Any]] = []
    if isinstance(inner, str):
        texts.append(inner)
    for item in inner if isinstance(inner, list) else []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            texts.append(str(item.get("text", "")))
        elif kind in ("image", "document"):
            part = _media_part(item, dropped, "tool_result.content")
            if part and "text" in part:
                texts.append(part["text"])
            elif part:
                extra.append(part)
        else:
            dropped.append(f"tool_result.content.{kind}")
    text = "\n\n".join(texts)
    call_id = str(block.get("tool_use_id", ""))
    name = names.get(call_id)
    if name is None:
        dropped.append("tool_result.name")  # its tool_use is not in the history
    response: dict[str, Any] = {
        "name": name or UNKNOWN_TOOL,
        "response": {"error": text} if block.get("is_error") else {"content": text},
    }
    if call_id:
        response = {"id": call_id, **response}
    return {"functionResponse": response}, extra


def _model_parts(content: Any, names: dict[str, str], dropped: list[str], i: int) -> list[dict[str, Any]]:
    """An assistant message's parts, each Gemini signature back on the part after its block."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    pending: str | None = None  # a thoughtSignature waiting for the next part
    for block in content if isinstance(content, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        part: dict[str, Any] | None = None
        if kind == "text" and block.get("text"):
            part = {"text": str(block["text"])}
        elif kind == "tool_use":
            call_id, name = str(block.get("id", "")), str(block.get("name", ""))
            names[call_id] = name
            args = block.get("input")
            call: dict[str, Any] = {"name": name, "args": args if isinstance(args, dict) else {}}
            part = {"functionCall": {"id": call_id, **call} if call_id else call}
        elif kind == "thinking" and (signature := thought_signature_of(block.get("signature"))):
            if pending is not None:
                dropped.append(f"messages[{i}].content.thinking")  # two in a row: the first had no part
            pending = signature
        elif kind != "text":
            dropped.append(f"messages[{i}].content.{kind}")
        if part is not None:
            if pending is not None:
                part["thoughtSignature"], pending = pending, None
            parts.append(part)
    if pending is not None:
        # The signature came last (Gemini signs a text answer's final, empty, part): it goes
        # back on the part it followed.
        if parts and "thoughtSignature" not in parts[-1]:
            parts[-1]["thoughtSignature"] = pending
        else:
            dropped.append(f"messages[{i}].content.thinking")
    return parts


def _sign_first_call(parts: list[dict[str, Any]]) -> None:
    """Gemini 3 validates the signature of each model turn's first function call."""
    for part in parts:
        if "functionCall" in part:
            part.setdefault("thoughtSignature", SKIP_SIGNATURE)
            return
