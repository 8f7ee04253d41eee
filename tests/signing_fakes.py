"""Fake providers that sign their thinking and check what comes back, as real ones do.

``SigningProvider`` is an Anthropic-format provider of one thinking family: it signs each
thinking block it streams, and answers 400 ``Invalid signature in thinking block`` to a request
carrying a thinking block it did not sign (what Anthropic's API and signing third parties do
with another family's blocks), and to an open tool loop whose last assistant message does not
start with a thinking block while thinking is ``enabled`` (Anthropic's rule, in its own words).
``ReasoningProvider`` is an OpenAI-compatible reasoning model (DeepSeek's thinking mode): it
streams ``reasoning_content`` and answers 400 to an assistant tool-call turn sent back without
it. Both answer from a script, one entry per request: an answer, or a failure ``Reply``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import attrs

from .fakes import JSON_HEADERS, OAI_DONE, Received, Reply, error_reply, oai_chunk, sse

THINKING_TYPES = ("thinking", "redacted_thinking")
# Anthropic's own words for the open-tool-loop rule (the message of its 400).
OPEN_LOOP_RULE = (
    "Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` is enabled, a "
    "final `assistant` message must start with a thinking block (preceeding the lastmost set of "
    "`tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous "
    "turns. To avoid this requirement, disable `thinking`."
)


@attrs.frozen
class Answer:
    """What a fake model says: its thinking (when thinking is on), then a tool call or text."""

    thinking: str = ""
    text: str = ""
    tool: tuple[str, str, dict[str, Any]] | None = None  # (id, name, input)


Step = Answer | Reply


def thinking_on(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def open_loop_assistant(messages: Sequence[dict[str, Any]]) -> int | None:
    """The index of the assistant message an ending ``tool_result`` answers, if the request ends so."""
    if len(messages) < 2 or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not (isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)):
        return None
    return len(messages) - 2 if messages[-2].get("role") == "assistant" else None


@attrs.define(eq=False)
class SigningProvider:
    """An Anthropic-format provider whose thinking signatures only it can verify."""

    family: str
    script: list[Step]
    signed: set[str] = attrs.Factory(set)
    bodies: list[dict[str, Any]] = attrs.Factory(list)  # every request body, in order
    model: str | None = None  # the model its answers name; None: the one asked for

    def __call__(self, r: Received) -> Reply:
        body = r.json()
        self.bodies.append(body)
        why = self.rejection(body)
        if why is not None:
            return error_reply(400, "invalid_request_error", why)
        step = self.script.pop(0)
        return step if isinstance(step, Reply) else self._stream(step, body)

    def rejection(self, body: dict[str, Any]) -> str | None:
        messages = body["messages"]
        for i, message in enumerate(messages):
            content = message.get("content")
            for j, block in enumerate(content if isinstance(content, list) else ()):
                if block.get("type") not in THINKING_TYPES:
                    continue
                mark = block.get("signature") if block["type"] == "thinking" else block.get("data")
                if mark not in self.signed:
                    return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
        k = open_loop_assistant(messages)
        enabled = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"
        if enabled and k is not None:  # adaptive thinking may not think, so has no such rule
            first = messages[k]["content"][0] if isinstance(messages[k]["content"], list) else None
            found = first.get("type") if isinstance(first, dict) else "text"
            if found not in THINKING_TYPES:
                return f"messages.{k}.content.0.type: " + OPEN_LOOP_RULE.format(found=found)
        return None

    def _stream(self, answer: Answer, body: dict[str, Any]) -> Reply:
        """The answer streamed as the model asked for (Claude Code drops the thinking of a
        message whose ``model`` is not the one it asked, so a real provider's echo matters)."""
        n = len(self.bodies)
        thinking = thinking_on(body)
        message = {"id": f"msg_{self.family}_{n}", "type": "message", "role": "assistant",
                   "model": self.model or body.get("model", "m"), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 10, "output_tokens": 1}}  # fmt: skip
        events = [sse("message_start", {"type": "message_start", "message": message})]
        index = 0
        if thinking and answer.thinking:
            signature = f"{self.family}-sig-{n}-{secrets.token_hex(8)}"
            self.signed.add(signature)
            events += _block(index, {"type": "thinking", "thinking": "", "signature": ""}, [
                {"type": "thinking_delta", "thinking": answer.thinking},
                {"type": "signature_delta", "signature": signature},
            ])  # fmt: skip
            index += 1
        if answer.text:
            events += _block(
                index, {"type": "text", "text": ""}, [{"type": "text_delta", "text": answer.text}]
            )
            index += 1
        if answer.tool is not None:
            tool_id, name, tool_input = answer.tool
            start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(tool_input)}
            events += _block(index, start, [delta])
        stop = "tool_use" if answer.tool is not None else "end_turn"
        events.append(sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 20},
                                            "delta": {"stop_reason": stop, "stop_sequence": None}}))  # fmt: skip
        events.append(sse("message_stop", {"type": "message_stop"}))
        return Reply(steps=events)


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    out = [
        sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
    ]
    for delta in deltas:
        out.append(
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )
    out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def reasoning_rejection(body: dict[str, Any]) -> str | None:
    """DeepSeek's thinking mode: an assistant turn with tool calls must bring its reasoning back."""
    for i, message in enumerate(body["messages"]):
        if (
            message.get("role") == "assistant"
            and message.get("tool_calls")
            and not message.get("reasoning_content")
        ):
            return f"Missing `reasoning_content` field in the assistant message at message index {i}"
    return None


@attrs.define(eq=False)
class ReasoningProvider:
    """An OpenAI-compatible reasoning model: streams ``reasoning_content``, wants it back."""

    script: list[Step]
    bodies: list[dict[str, Any]] = attrs.Factory(list)

    def __call__(self, r: Received) -> Reply:
        body = r.json()
        self.bodies.append(body)
        why = reasoning_rejection(body)
        if why is not None:
            payload = {
                "error": {"message": why, "type": "invalid_request_error", "code": "invalid_request_error"}
            }
            return Reply(status=400, headers=list(JSON_HEADERS), steps=[json.dumps(payload).encode()])
        step = self.script.pop(0)
        if isinstance(step, Reply):
            return step
        chunks = [oai_chunk({"role": "assistant", "content": None, "reasoning_content": ""})]
        if step.thinking:
            chunks.append(oai_chunk({"reasoning_content": step.thinking}))
        if step.text:
            chunks.append(oai_chunk({"content": step.text}))
        if step.tool is not None:
            tool_id, name, tool_input = step.tool
            call = {"index": 0, "id": tool_id, "type": "function",
                    "function": {"name": name, "arguments": json.dumps(tool_input)}}  # fmt: skip
            chunks.append(oai_chunk({"tool_calls": [call]}))
        chunks.append(oai_chunk({}, "tool_calls" if step.tool is not None else "stop"))
        chunks.append(oai_chunk(usage={"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}))
        chunks.append(OAI_DONE)
        return Reply(steps=chunks)
