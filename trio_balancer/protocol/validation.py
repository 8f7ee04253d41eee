"""What a Messages request must look like before the balancer reads it. Pure.

The balancer reads parts of every request itself: the model and ``stream`` to route and
shape the answer, ``metadata.user_id`` for sticky sessions, the messages, system prompt and
tools to estimate tokens when a provider reports none, and every field it converts for an
OpenAI-compatible provider. Each of those is checked here, once, before any upstream call, so
that code further in can rely on the shapes (a ``messages`` that is a number once reached the
token estimate after the provider had answered, and took the app down with it).

Fields the balancer only forwards stay the provider's business: an unknown field, an
unusual ``role`` or a block type we do not know pass through untouched.

Every error names the field by its path, as the provider would:
``messages[0].content[0].source: must be an object``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from trio_balancer.errors import InvalidRequest

__all__ = ["MAX_JSON_DEPTH", "nests_deeper_than", "parse_request_body", "validate_messages_request"]

# Nesting depth a request body may have. The encoders and converters the balancer runs on a
# body (the dedup signature, the OpenAI conversion, the token estimate) recurse per level, and
# Python's recursion limit (~1,000 frames) is for the whole stack: ~490 nested tool_result
# levels were enough to crash the request parser. serde_json defaults to the same 128; a real
# Claude Code request, tool schemas included, nests about 12 deep.
MAX_JSON_DEPTH = 128


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value has containers more than ``limit`` levels deep.

    Breadth first, one level per pass and no recursion, so the check cannot itself run out
    of stack; ~60 us for a 45 KB Claude Code request (a scan of the raw bytes that skips
    strings cost 5x more).
    """
    level = [value] if type(value) in (dict, list) else []
    if not level:
        return False
    for _ in range(limit):
        deeper = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                kind = type(item)
                if kind is dict or kind is list:
                    deeper.append(item)
        if not deeper:
            return False
        level = deeper
    return True


def parse_request_body(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The request body as a JSON object; :class:`InvalidRequest` when it is not one."""
    too_deep = f"request body nests deeper than {max_depth} levels"
    try:
        payload = json.loads(body)
    except RecursionError:  # deeper than the parser's own stack allows
        raise InvalidRequest(too_deep) from None
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    if nests_deeper_than(payload, max_depth - 1):  # the body itself is the first level
        raise InvalidRequest(too_deep)
    if _SURROGATE_ESCAPE.search(body) is not None:
        _reject_lone_surrogates(payload)
    return payload


# A \uD800-\uDFFF escape: the only way a lone surrogate gets into parsed JSON (the parser
# takes bytes as strict UTF-8). Pairs are fine; a lone one is no text, and every encoder the
# balancer uses on a body would fail on it.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89abAB]|\\[uU][dD][c-fC-F]")


def _reject_lone_surrogates(payload: dict[str, Any]) -> None:
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"request body holds a lone UTF-16 surrogate (\\u{ord(exc.object[exc.start]):04x}), which is not text"
        ) from None


def validate_messages_request(payload: Mapping[str, Any]) -> None:
    """Check every field the balancer reads; raises :class:`InvalidRequest` naming the first bad one."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)")
    if "stream" in payload and not isinstance(payload["stream"], bool):
        raise InvalidRequest("stream: must be a boolean")
    messages = payload.get("messages")
    if messages is not None:
        _list(messages, "messages")
        for i, message in enumerate(messages):
            _message(message, f"messages[{i}]")
    if "system" in payload and payload["system"] is not None:
        _content(payload["system"], "system")
    if "tools" in payload and payload["tools"] is not None:
        _list(payload["tools"], "tools")
        for i, tool in enumerate(payload["tools"]):
            _tool(tool, f"tools[{i}]")
    _optional_object(payload, "tool_choice", "")
    choice = payload.get("tool_choice")
    if isinstance(choice, Mapping):
        _optional_str(choice, "type", "tool_choice")
        _optional_str(choice, "name", "tool_choice")
    _optional_object(payload, "thinking", "")
    thinking = payload.get("thinking")
    if isinstance(thinking, Mapping):
        _optional_str(thinking, "type", "thinking")
        _optional_int(thinking, "budget_tokens", "thinking")
    _optional_object(payload, "metadata", "")
    metadata = payload.get("metadata")
    if isinstance(metadata, Mapping):
        _optional_str(metadata, "user_id", "metadata")
    _optional_int(payload, "max_tokens", "")
    for key in ("temperature", "top_p"):
        value = payload.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise InvalidRequest(f"{key}: must be a finite number")
    stops = payload.get("stop_sequences")
    if stops is not None:
        _list(stops, "stop_sequences")
        for i, stop in enumerate(stops):
            if not isinstance(stop, str):
                raise InvalidRequest(f"stop_sequences[{i}]: must be a string")


def _message(message: Any, path: str) -> None:
    _object(message, path)
    _optional_str(message, "role", path)
    if message.get("content") is not None:
        _content(message["content"], f"{path}.content")


def _content(content: Any, path: str) -> None:
    """A string, or a list of content blocks."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or a list of content blocks")
    for i, block in enumerate(content):
        _block(block, f"{path}[{i}]")


def _block(block: Any, path: str) -> None:
    _object(block, path)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{path}.type: field required (a string)")
    if kind == "text":
        _required_str(block, "text", path)
    elif kind in ("image", "document"):
        source = block.get("source")
        if source is not None:
            _object(source, f"{path}.source")
            _optional_str(source, "type", f"{path}.source")
            for key in ("media_type", "url"):
                _optional_str(source, key, f"{path}.source")
            if source.get("type") in ("base64", "text"):
                _optional_str(source, "data", f"{path}.source")
            elif source.get("type") == "content":
                _content(source.get("content", []), f"{path}.source.content")
    elif kind == "tool_use":
        _optional_str(block, "id", path)
        _optional_str(block, "name", path)
        _optional_object(block, "input", path)
    elif kind == "tool_result":
        _optional_str(block, "tool_use_id", path)
        if "is_error" in block and not isinstance(block["is_error"], bool | None):
            raise InvalidRequest(f"{path}.is_error: must be a boolean")
        if block.get("content") is not None:
            _content(block["content"], f"{path}.content")
    elif kind == "thinking":
        _optional_str(block, "thinking", path)
        _optional_str(block, "signature", path)


def _tool(tool: Any, path: str) -> None:
    _object(tool, path)
    _optional_str(tool, "name", path)
    _optional_str(tool, "type", path)
    _optional_str(tool, "description", path)
    _optional_object(tool, "input_schema", path)


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{path}: must be an object")


def _list(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise InvalidRequest(f"{path}: must be a list")


def _optional_object(parent: Mapping[str, Any], key: str, path: str) -> None:
    value = parent.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidRequest(f"{_where(path, key)}: must be an object")


def _optional_str(parent: Mapping[str, Any], key: str, path: str) -> None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{_where(path, key)}: must be a string")


def _required_str(parent: Mapping[str, Any], key: str, path: str) -> None:
    if not isinstance(parent.get(key), str):
        raise InvalidRequest(f"{_where(path, key)}: field required (a string)")


def _optional_int(parent: Mapping[str, Any], key: str, path: str) -> None:
    value = parent.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidRequest(f"{_where(path, key)}: must be an integer")
