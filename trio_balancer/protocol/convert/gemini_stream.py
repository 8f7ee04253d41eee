"""Gemini ``streamGenerateContent?alt=sse`` -> Anthropic Messages stream, one chunk at a time. Pure.

Each ``data:`` line of Gemini's stream is a whole ``GenerateContentResponse`` holding the next
parts of ``candidates[0].content``; every part becomes Anthropic events in the same call:

- a ``text`` part is a text delta, or a thinking delta when it has ``thought: true``; text and
  thinking blocks open at their first delta and close when the stream switches to something
  else;
- a ``thoughtSignature`` (Gemini's opaque record of its reasoning, which it wants back on the
  same part next turn) becomes our signature ``tbx1.g.<sig>`` (``gemini_request.py`` reads it
  back): on a thought part, or on any part while a thinking block is open, it is that block's
  ``signature_delta``, and the block closes (one signature per block); on a text or
  ``functionCall`` part with no thinking open, an empty thinking block carrying just the
  signature goes before it, so it survives the round trip through the client's history;
- a ``functionCall`` is a whole ``tool_use`` block (Gemini never splits a call): start, one
  ``input_json_delta`` of its ``args``, stop. Its id is Gemini's when given (Gemini 3 gives
  one), else derived from the message id and the call's position, so a retried conversion
  names it the same;
- the message ends at :meth:`GeminiStreamConverter.close`, once a ``finishReason`` came (usage
  may come on the same chunk or one after). A stream without one is an error, not a made up
  ``end_turn``; so are the finish reasons that mean no usable answer (a malformed call).
  A ``promptFeedback.blockReason`` with no candidate is a refusal of the prompt.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from trio_balancer.protocol import events
from trio_balancer.protocol.convert.gemini_request import gemini_signature
from trio_balancer.protocol.convert.stream import ConversionError, UpstreamStreamError
from trio_balancer.protocol.events import sse_event
from trio_balancer.protocol.google_errors import google_error_message, google_error_object, google_error_type
from trio_balancer.protocol.sse import MalformedEventData, SSEEvent
from trio_balancer.protocol.tokens import estimate_text

__all__ = ["GEMINI_STOP_REASONS", "GeminiStreamConverter", "gemini_usage", "raise_for_gemini_error"]

# finishReason -> stop_reason; a reason not here (MALFORMED_FUNCTION_CALL, OTHER, LANGUAGE,
# UNEXPECTED_TOOL_CALL...) leaves no answer a client can act on.
GEMINI_STOP_REASONS: Mapping[str, str] = {
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "refusal",
    "RECITATION": "refusal",
    "BLOCKLIST": "refusal",
    "PROHIBITED_CONTENT": "refusal",
    "SPII": "refusal",
    "IMAGE_SAFETY": "refusal",
}


def raise_for_gemini_error(chunk: Any) -> None:
    """Raise :class:`UpstreamStreamError` when ``chunk`` is a Google error object."""
    err = google_error_object(chunk)
    if err is not None:
        message = google_error_message(err) or "error in stream"
        raise UpstreamStreamError(message, google_error_type(err.get("status"), err.get("code")))


def gemini_usage(metadata: Any) -> dict[str, int] | None:
    """Anthropic usage from ``usageMetadata``: input excludes the cached part, counted apart;
    output counts the thoughts, which Gemini bills as output."""
    if not isinstance(metadata, dict):
        return None
    cached = _int(metadata.get("cachedContentTokenCount"))
    prompt = _int(metadata.get("promptTokenCount")) + _int(metadata.get("toolUsePromptTokenCount"))
    out = {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": _int(metadata.get("candidatesTokenCount"))
        + _int(metadata.get("thoughtsTokenCount")),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


class GeminiStreamConverter:
    def __init__(self, *, model: str, message_id: str | None = None) -> None:
        self.model = model
        self.message_id = message_id
        self._started = False
        self._next_index = 0
        self._current: tuple[str, int] | None = None  # open text/thinking block: (kind, index)
        self._calls = 0  # tool_use blocks emitted
        self._call_ids: set[str] = set()
        self._stop_reason: str | None = None
        self._usage: dict[str, int] | None = None
        self._ended = False
        self.output_text_chars = 0
        self._output_estimate = 0
        self.usage_reported = False  # the upstream sent usageMetadata

    # -- input -------------------------------------------------------------------------------

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        if event.data is None or self._ended or not event.data.strip():
            return []
        try:
            chunk = event.json()
        except MalformedEventData as exc:
            raise ConversionError(str(exc)) from None
        if isinstance(chunk, list) and len(chunk) == 1:
            chunk = chunk[0]  # a JSON-array stream's element, sent as one event
        raise_for_gemini_error(chunk)
        if not isinstance(chunk, dict):
            raise ConversionError("chunk is not a JSON object")
        usage = gemini_usage(chunk.get("usageMetadata"))
        if usage is not None:
            self._usage = usage
            self.usage_reported = True
        out: list[SSEEvent] = []
        if not self._started:
            out.append(self._message_start(chunk))
        if self._stop_reason is not None:
            return out  # after the finish only usage counts
        candidates = chunk.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            feedback = chunk.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                self._stop_reason = "refusal"  # the prompt was blocked: nothing will follow
            return out
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict):
                out.extend(self._part(part))
        finish = candidate.get("finishReason")
        if isinstance(finish, str) and finish:
            out.extend(self._finish(finish))
        return out

    def close(self) -> list[SSEEvent]:
        """End of the upstream stream: the message ends, if Gemini said it finished."""
        if self._ended:
            return []
        if self._stop_reason is None:
            raise ConversionError("the upstream stream ended before a finishReason")
        out = self._close_current()
        stop = {"stop_reason": self._stop_reason, "stop_sequence": None}
        out.append(sse_event(events.message_delta(stop, self.usage())))
        out.append(sse_event(events.message_stop()))
        self._ended = True
        return out

    @property
    def ended(self) -> bool:
        return self._ended

    def usage(self) -> dict[str, int]:
        """The usage Gemini reported last (its counts are running totals), else an estimate."""
        return dict(self._usage) if self._usage else {"output_tokens": self._output_estimate}

    # -- parts -------------------------------------------------------------------------------

    def _part(self, part: Mapping[str, Any]) -> list[SSEEvent]:
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        text = part.get("text")
        text = text if isinstance(text, str) else ""
        out: list[SSEEvent] = []
        if part.get("thought"):
            if text:
                out.extend(self._delta("thinking", {"type": "thinking_delta", "thinking": text}))
                self._count(text)
            if signature:
                out.extend(self._sign(signature))
            return out
        if signature:
            out.extend(self._sign(signature))
        call = part.get("functionCall")
        if isinstance(call, dict):
            out.extend(self._call(call))
        elif text:
            out.extend(self._delta("text", {"type": "text_delta", "text": text}))
            self._count(text)
        # Other parts (inlineData images, executableCode...) have no block here.
        return out

    def _sign(self, signature: str) -> list[SSEEvent]:
        """The signature on the open thinking block, else on an empty one of its own; closed."""
        out: list[SSEEvent] = []
        if self._current is None or self._current[0] != "thinking":
            out.extend(self._close_current())
            index, start = self._open({"type": "thinking", "thinking": "", "signature": ""})
            out.append(start)
            self._current = ("thinking", index)
        delta = {"type": "signature_delta", "signature": gemini_signature(signature)}
        out.append(sse_event(events.content_block_delta(self._current[1], delta)))
        return out + self._close_current()

    def _call(self, call: Mapping[str, Any]) -> list[SSEEvent]:
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise ConversionError("a functionCall without a name")
        out = self._close_current()
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            seed = f"{self.message_id}:{self._calls}".encode()
            call_id = "toolu_" + hashlib.sha256(seed).hexdigest()[:24]
        if call_id in self._call_ids:  # two calls of one id would pair their results ambiguously
            call_id = f"{call_id}_{self._calls}"
        self._call_ids.add(call_id)
        self._calls += 1
        index, start = self._open({"type": "tool_use", "id": call_id, "name": name, "input": {}})
        args = call.get("args")
        partial = json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False)
        self._count(partial)
        delta = {"type": "input_json_delta", "partial_json": partial}
        return [*out, start, sse_event(events.content_block_delta(index, delta)), self._stop(index)]

    def _finish(self, finish: str) -> list[SSEEvent]:
        reason = GEMINI_STOP_REASONS.get(finish)
        if reason is None:
            raise ConversionError(f"Gemini stopped with finishReason {finish}")
        if reason == "end_turn" and self._calls:
            reason = "tool_use"  # Gemini says STOP after function calls; Claude Code needs tool_use
        self._stop_reason = reason
        return self._close_current()

    # -- output ------------------------------------------------------------------------------

    def _message_start(self, chunk: Mapping[str, Any]) -> SSEEvent:
        self._started = True
        upstream_id = chunk.get("responseId")
        if self.message_id is None:
            self.message_id = (
                f"msg_{upstream_id}"
                if isinstance(upstream_id, str) and upstream_id
                else f"msg_{uuid.uuid4().hex}"
            )
        usage = {"input_tokens": 0, "output_tokens": 0}
        if self._usage:
            usage["input_tokens"] = self._usage["input_tokens"]
            if "cache_read_input_tokens" in self._usage:
                usage["cache_read_input_tokens"] = self._usage["cache_read_input_tokens"]
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return sse_event(events.message_start(message))

    def _open(self, block: dict[str, Any]) -> tuple[int, SSEEvent]:
        index = self._next_index
        self._next_index += 1
        return index, sse_event(events.content_block_start(index, block))

    def _stop(self, index: int) -> SSEEvent:
        return sse_event(events.content_block_stop(index))

    def _delta(self, kind: str, delta: dict[str, Any]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._current is None or self._current[0] != kind:
            out.extend(self._close_current())
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            index, start = self._open(block)
            out.append(start)
            self._current = (kind, index)
        out.append(sse_event(events.content_block_delta(self._current[1], delta)))
        return out

    def _close_current(self) -> list[SSEEvent]:
        if self._current is None:
            return []
        index = self._current[1]
        self._current = None
        return [self._stop(index)]

    def _count(self, text: str) -> None:
        self.output_text_chars += len(text)
        self._output_estimate += estimate_text(text)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
