"""OpenAI Chat Completions stream -> Anthropic Messages stream, one chunk at a time. Pure.

Feed it the decoded SSE events of an OpenAI stream; it returns the Anthropic events each one
completes, already encoded, as soon as it can: a text or reasoning delta becomes a
``content_block_delta`` in the same call. Block bookkeeping:

- text and thinking blocks are opened when their first delta arrives and closed when the
  stream switches to something else;
- a thinking block made from ``reasoning_content`` is signed, when a ``sign`` is given, with a
  ``signature_delta`` just before it closes (as Anthropic's streams do): the balancer's own
  signature, which marks it as converted reasoning no Anthropic-format provider can verify
  (``protocol/thinking.py``), where an empty one would be sent back and refused;
- each tool call (by its OpenAI ``index``) is its own ``tool_use`` block, opened once its name
  is known and kept open until the message ends, so arguments of interleaved calls still land
  in the right block (Anthropic deltas carry the block index);
- the message ends (``message_delta`` with stop reason and usage, then ``message_stop``) when
  the upstream has said both that it finished and what it used, or at ``[DONE]``, or at the end
  of the stream if it finished. A stream that ends without finishing is an error, not a made
  up ``end_turn``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs

from trio_balancer.errors import error_type_for_status
from trio_balancer.protocol.convert.blocks import BlockWriter, WrittenStream, nonneg_int
from trio_balancer.protocol.convert.errors import ConversionError, UpstreamStreamError
from trio_balancer.protocol.sse import MalformedEventData, SSEEvent

__all__ = [
    "STOP_REASONS",
    "StreamConverter",
    "content_parts",
    "find_usage",
    "openai_error_type",
]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    # OpenAI's content filter stopped the answer; Anthropic's closest is a refusal.
    "content_filter": "refusal",
}


@attrs.define
class _Tool:
    index: int | None = None  # Anthropic block index, once opened
    id: str = ""
    name: str = ""
    pending_args: list[str] = attrs.Factory(list)  # arguments seen before the name
    closed: bool = False


class StreamConverter(WrittenStream):
    def __init__(
        self, *, model: str, message_id: str | None = None, sign: Callable[[], str] | None = None
    ) -> None:
        self.model = model
        self._out = BlockWriter(model=model, message_id=message_id, sign=sign)
        self._tools: dict[int, _Tool] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self.usage_reported = False  # the upstream sent a usage object
        self._refused = False

    # -- input -------------------------------------------------------------------------------

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        if event.data is None or self._out.ended:
            return []
        data = event.data.strip()
        if data == b"[DONE]":
            return self._end(done=True)
        try:
            chunk = event.json()
        except MalformedEventData as exc:
            raise ConversionError(str(exc)) from None
        if not isinstance(chunk, dict):
            raise ConversionError("chunk is not a JSON object")
        if chunk.get("error"):  # alone (most servers) or beside choices (OpenRouter mid-stream)
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise UpstreamStreamError(str(err.get("message") or "error in stream"), openai_error_type(err))
        out: list[SSEEvent] = []
        if not self._out.started:
            out.append(self._message_start(chunk))
        usage = find_usage(chunk)
        if usage is not None:
            self._usage = usage
            self.usage_reported = True
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ConversionError("chunk's choices is not a list")
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is not something Anthropic clients can receive
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                out.extend(self._choice_delta(delta))
            finish = choice.get("finish_reason")
            if finish:
                self._finish_reason = str(finish)
                out.extend(self._close_all())
        if self._finish_reason is not None and self._usage is not None:
            out.extend(self._end(done=False))
        return out

    def close(self) -> list[SSEEvent]:
        """End of the upstream stream."""
        if self._out.ended:
            return []
        if self._finish_reason is None:
            raise ConversionError("the upstream stream ended before a finish_reason or [DONE]")
        return self._end(done=False)

    # -- output ------------------------------------------------------------------------------

    def _choice_delta(self, delta: dict[str, Any]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out.extend(self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning}))
        for kind, text in content_parts(delta.get("content")):
            key = "text" if kind == "text" else "thinking"
            out.extend(self._delta(kind, {"type": f"{key}_delta", key: text}))
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refused = True  # the refusal's words are the answer; the stop reason says so
            out.extend(self._delta("text", {"type": "text_delta", "text": refusal}))
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise ConversionError("delta's tool_calls is not a list")
        for position, call in enumerate(calls):
            out.extend(self._tool_delta(position, call))
        return out

    def _message_start(self, chunk: dict[str, Any]) -> SSEEvent:
        # OpenAI reports usage only at the end; the final numbers go in message_delta.
        return self._out.message_start(chunk.get("id"), {"input_tokens": 0, "output_tokens": 0})

    def _delta(self, kind: str, delta: dict[str, Any]) -> list[SSEEvent]:
        """A text or thinking delta; a new block also ends the tool calls before it."""
        out = [] if self._out.is_open(kind) else self._close_tools()
        out.extend(self._out.delta(kind, delta))
        self._out.count(delta.get("text") or delta.get("thinking") or "")
        return out

    def _tool_delta(self, position: int, call: Any) -> list[SSEEvent]:
        if not isinstance(call, dict):
            return []
        key = call.get("index", position)
        key = key if isinstance(key, int) else position
        tool = self._tools.get(key)
        if tool is None:
            tool = self._tools[key] = _Tool()
        if isinstance(call.get("id"), str) and call["id"] and not tool.id:
            tool.id = call["id"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise ConversionError(f"tool call {key}'s function is not an object")
        if isinstance(function.get("name"), str) and function["name"] and not tool.name:
            tool.name = function["name"]
        args = function.get("arguments")
        out: list[SSEEvent] = []
        if tool.index is None:
            if isinstance(args, str) and args:
                tool.pending_args.append(args)
            if not tool.name:
                return out  # wait for the name: a tool_use block cannot start without one
            out.extend(self._out.close_open())
            tool_id = self._out.unique_tool_id(tool.id or f"toolu_{uuid.uuid4().hex[:24]}")
            tool.index, start = self._out.open(
                {"type": "tool_use", "id": tool_id, "name": tool.name, "input": {}}
            )
            out.append(start)
            pending, tool.pending_args = "".join(tool.pending_args), []
            if pending:
                out.append(self._out.json_delta(tool.index, pending))
            return out
        if isinstance(args, str) and args:
            if tool.closed:
                raise ConversionError(f"arguments for tool call {key} arrived after its block ended")
            out.append(self._out.json_delta(tool.index, args))
        return out

    def _close_tools(self) -> list[SSEEvent]:
        out = []
        for tool in sorted(self._tools.values(), key=lambda t: t.index if t.index is not None else -1):
            if tool.index is not None and not tool.closed:
                tool.closed = True
                out.append(self._out.stop(tool.index))
        return out

    def _close_all(self) -> list[SSEEvent]:
        out = self._out.close_open()
        # A call whose name never came cannot be shown; better an error than a nameless tool.
        for key, tool in self._tools.items():
            if tool.index is None:
                raise ConversionError(f"tool call {key} ended without a function name")
        return out + self._close_tools()

    def _end(self, *, done: bool) -> list[SSEEvent]:
        if self._out.ended:
            return []
        out = []
        if not self._out.started:
            if not done:
                raise ConversionError("the upstream stream ended before its first chunk")
            out.append(self._message_start({}))
        out.extend(self._close_all())
        reason = "refusal" if self._refused else STOP_REASONS.get(self._finish_reason or "", "end_turn")
        if reason == "end_turn" and self._tools:
            reason = "tool_use"  # some servers say "stop" after tool calls; Claude Code needs tool_use
        return out + self._out.message_end(reason, self.usage())

    def usage(self) -> dict[str, int]:
        """Anthropic usage from OpenAI's: input excludes cache reads, which are counted apart."""
        u = self._usage
        if not u:
            return {"output_tokens": self._out.output_estimate}
        prompt = nonneg_int(u.get("prompt_tokens"))
        details = u.get("prompt_tokens_details") or {}
        cached = nonneg_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        out = {
            "input_tokens": max(0, prompt - cached),
            "output_tokens": nonneg_int(u.get("completion_tokens")),
        }
        if cached:
            out["cache_read_input_tokens"] = cached
        return out


def find_usage(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A chunk's usage wherever the provider puts it: top level (OpenAI), inside the first
    choice (Moonshot/Kimi), or under ``x_groq`` (Groq)."""
    usage = chunk.get("usage")
    if isinstance(usage, dict) and usage:
        return usage
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        usage = choices[0].get("usage")
        if isinstance(usage, dict) and usage:
            return usage
    groq = chunk.get("x_groq")
    if isinstance(groq, dict) and isinstance(groq.get("usage"), dict) and groq["usage"]:
        return groq["usage"]  # type: ignore[no-any-return]
    return None


def content_parts(content: Any) -> list[tuple[str, str]]:
    """``(text | thinking, text)`` pieces of a delta's or message's ``content``.

    A string is text. A list of typed parts (Mistral's reasoning models) holds ``text`` parts
    and ``thinking`` parts, the latter with a list of text parts of their own.
    """
    if isinstance(content, str):
        return [("text", content)] if content else []
    out: list[tuple[str, str]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str) and part["text"]:
            out.append(("text", part["text"]))
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            pieces = inner if isinstance(inner, list) else [{"type": "text", "text": inner}]
            text = "".join(
                p["text"] for p in pieces if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
            if text:
                out.append(("thinking", text))
    return out


# Error types an OpenAI-style error object may already give in Anthropic's own words.
_SAME_TYPES = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
     "rate_limit_error", "overloaded_error", "api_error", "timeout_error"}
)  # fmt: skip


def openai_error_type(err: dict[str, Any]) -> str:
    """The Anthropic ``error.type`` for an OpenAI-style error object.

    ``type`` first when it already is one of Anthropic's (Groq sends
    ``"type": "invalid_request_error", "code": "tool_use_failed"``: the request's fault, not a
    provider failure); then keywords of ``code`` and ``type``; then a numeric code as an HTTP
    status (OpenRouter sends ``"code": 429``).
    """
    kind = str(err.get("type") or "")
    if kind in _SAME_TYPES:
        return kind
    for text in (str(err.get("code") or ""), kind):
        if "rate" in text or text == "429" or "quota" in text:
            return "rate_limit_error"
        if "overload" in text or text in ("503", "529"):
            return "overloaded_error"
        if "context_length" in text or text == "400" or "invalid" in text:
            return "invalid_request_error"
        if "timeout" in text or text in ("408", "504"):
            return "timeout_error"
        if text.isdigit():
            return error_type_for_status(int(text))
    return "api_error"
