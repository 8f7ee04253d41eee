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
from collections.abc import Mapping
from typing import Any

from trio_balancer.protocol.convert.blocks import BlockWriter, WrittenStream, nonneg_int
from trio_balancer.protocol.convert.errors import ConversionError, UpstreamStreamError
from trio_balancer.protocol.gemini import gemini_signature
from trio_balancer.protocol.google_errors import (
    google_error_message,
    google_error_object,
    google_error_object_type,
)
from trio_balancer.protocol.sse import MalformedEventData, SSEEvent

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
        raise UpstreamStreamError(message, google_error_object_type(err, err.get("code")))


def gemini_usage(metadata: Any) -> dict[str, int] | None:
    """Anthropic usage from ``usageMetadata``: input excludes the cached part, counted apart;
    output counts the thoughts, which Gemini bills as output."""
    if not isinstance(metadata, dict):
        return None
    cached = nonneg_int(metadata.get("cachedContentTokenCount"))
    prompt = nonneg_int(metadata.get("promptTokenCount")) + nonneg_int(
        metadata.get("toolUsePromptTokenCount")
    )
    out = {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": nonneg_int(metadata.get("candidatesTokenCount"))
        + nonneg_int(metadata.get("thoughtsTokenCount")),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


class GeminiStreamConverter(WrittenStream):
    def __init__(self, *, model: str, message_id: str | None = None) -> None:
        self.model = model
        self._out = BlockWriter(model=model, message_id=message_id)
        self._calls = 0  # tool_use blocks emitted
        self._stop_reason: str | None = None
        self._usage: dict[str, int] | None = None
        self.usage_reported = False  # the upstream sent usageMetadata

    # -- input -------------------------------------------------------------------------------

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        if event.data is None or self._out.ended or not event.data.strip():
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
        if not self._out.started:
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
        if self._out.ended:
            return []
        if self._stop_reason is None:
            raise ConversionError("the upstream stream ended before a finishReason")
        return self._out.close_open() + self._out.message_end(self._stop_reason, self.usage())

    def usage(self) -> dict[str, int]:
        """The usage Gemini reported last (its counts are running totals), else an estimate."""
        return dict(self._usage) if self._usage else {"output_tokens": self._out.output_estimate}

    # -- parts -------------------------------------------------------------------------------

    def _part(self, part: Mapping[str, Any]) -> list[SSEEvent]:
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        text = part.get("text")
        text = text if isinstance(text, str) else ""
        out: list[SSEEvent] = []
        if part.get("thought"):
            if text:
                out.extend(self._out.delta("thinking", {"type": "thinking_delta", "thinking": text}))
                self._out.count(text)
            if signature:
                out.extend(self._out.sign_thinking(gemini_signature(signature)))
            return out
        if signature:
            out.extend(self._out.sign_thinking(gemini_signature(signature)))
        call = part.get("functionCall")
        if isinstance(call, dict):
            out.extend(self._call(call))
        elif text:
            out.extend(self._out.delta("text", {"type": "text_delta", "text": text}))
            self._out.count(text)
        # Other parts (inlineData images, executableCode...) have no block here.
        return out

    def _call(self, call: Mapping[str, Any]) -> list[SSEEvent]:
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise ConversionError("a functionCall without a name")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            seed = f"{self._out.message_id}:{self._calls}".encode()
            call_id = "toolu_" + hashlib.sha256(seed).hexdigest()[:24]
        call_id = self._out.unique_tool_id(call_id)
        self._calls += 1
        args = call.get("args")
        partial = json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False)
        return self._out.whole_tool_use(call_id, name, partial)

    def _finish(self, finish: str) -> list[SSEEvent]:
        reason = GEMINI_STOP_REASONS.get(finish)
        if reason is None:
            raise ConversionError(f"Gemini stopped with finishReason {finish}")
        if reason == "end_turn" and self._calls:
            reason = "tool_use"  # Gemini says STOP after function calls; Claude Code needs tool_use
        self._stop_reason = reason
        return self._out.close_open()

    def _message_start(self, chunk: Mapping[str, Any]) -> SSEEvent:
        usage = {"input_tokens": 0, "output_tokens": 0}
        if self._usage:  # Gemini may report the prompt's count on its first chunk
            usage["input_tokens"] = self._usage["input_tokens"]
            if "cache_read_input_tokens" in self._usage:
                usage["cache_read_input_tokens"] = self._usage["cache_read_input_tokens"]
        return self._out.message_start(chunk.get("responseId"), usage)
