"""One response, two forms: SSE events <-> a JSON message. Pure.

A shared flight streams in the form its first request asked for; a listener that wants the
other form gets it rebuilt: a JSON message assembled from the events (every block type: text,
thinking with its signature, redacted thinking, tool use with its input parsed, server tool
blocks; usage and stop reason), or an event stream replayed from a JSON message.
"""

from __future__ import annotations

import json
from typing import Any

from trio_balancer.errors import error_body
from trio_balancer.protocol import events
from trio_balancer.protocol.sse import SSEDecoder, SSEEvent

__all__ = [
    "AssemblyError",
    "Form",
    "JsonToSSE",
    "MessageAssembler",
    "Passthrough",
    "SSEToJson",
    "form_for",
    "message_to_events",
]


class AssemblyError(Exception):
    """The events do not make a complete message (cut stream, error event, bad JSON)."""


class MessageAssembler:
    """Feed it the events of an Anthropic stream in order; ``message()`` at the end."""

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._stopped = False
        self.error: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> None:
        kind = event.event
        if kind in (None, "ping") or event.data is None:
            return
        try:
            data = json.loads(event.data)
        except ValueError:
            raise AssemblyError(f"{kind} event is not JSON") from None
        if kind == "message_start":
            self._message = dict(data["message"])
            self._message["content"] = []
        elif kind == "content_block_start":
            self._blocks[data["index"]] = dict(data["content_block"])
        elif kind == "content_block_delta":
            block = self._blocks.get(data["index"])
            if block is None:
                raise AssemblyError(f"delta for unknown block {data['index']}")
            delta = data["delta"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif dtype == "signature_delta":
                block["signature"] = block.get("signature", "") + delta.get("signature", "")
            elif dtype == "input_json_delta":
                self._json.setdefault(data["index"], []).append(delta.get("partial_json", ""))
            elif dtype == "citations_delta":
                block.setdefault("citations", []).append(delta.get("citation"))
        elif kind == "message_delta":
            if self._message is None:
                raise AssemblyError("message_delta before message_start")
            self._message.update(data.get("delta") or {})
            usage = data.get("usage")
            if isinstance(usage, dict):
                merged = dict(self._message.get("usage") or {})
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._message["usage"] = merged
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            self.error = data

    def message(self) -> dict[str, Any]:
        if self.error is not None:
            raise AssemblyError("the stream ended with an error")
        if self._message is None or not self._stopped:
            raise AssemblyError("the stream ended before message_stop")
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if index in self._json:
                raw = "".join(self._json[index])
                try:
                    block["input"] = json.loads(raw) if raw else {}
                except ValueError:
                    raise AssemblyError(f"tool input of block {index} is not JSON") from None
            content.append(block)
        message = dict(self._message)
        message["content"] = content
        return message


def message_to_events(message: dict[str, Any]) -> list[bytes]:
    """A complete JSON message as the event stream Anthropic would have sent for it."""
    usage = dict(message.get("usage") or {})
    start = {
        k: v for k, v in message.items() if k not in ("content", "stop_reason", "stop_sequence", "usage")
    }
    start.update({"content": [], "stop_reason": None, "stop_sequence": None})
    start["usage"] = {**usage, "output_tokens": min(1, usage.get("output_tokens", 0))}
    out = [events.message_start(start)]
    for index, block in enumerate(message.get("content") or []):
        out.extend(_block_events(index, block))
        out.append(events.content_block_stop(index))
    stop = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    out.append(events.message_delta(stop, usage))
    out.append(events.message_stop())
    return [events.encode(e) for e in out]


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    """One content block as its start event and the deltas that fill it."""
    start, delta = events.content_block_start, events.content_block_delta
    kind = block.get("type")
    if kind == "text":
        return [
            start(index, {"type": "text", "text": ""}),
            delta(index, {"type": "text_delta", "text": block.get("text", "")}),
        ]
    if kind == "thinking":
        out = [
            start(index, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(index, {"type": "thinking_delta", "thinking": block.get("thinking", "")}),
        ]
        if block.get("signature"):
            out.append(delta(index, {"type": "signature_delta", "signature": block["signature"]}))
        return out
    if kind in ("tool_use", "server_tool_use"):
        start_block = {k: v for k, v in block.items() if k != "input"}
        start_block["input"] = {}
        partial = events.dumps(block.get("input", {}))
        return [
            start(index, start_block),
            delta(index, {"type": "input_json_delta", "partial_json": partial}),
        ]
    return [start(index, block)]  # redacted_thinking, web search results...: whole in the start


class Passthrough:
    """The listener wants the form the flight streams: everything goes through as it comes."""

    def head(
        self, status: int, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        return status, headers

    def chunk(self, data: bytes) -> bytes | None:
        return data

    def end(self) -> tuple[tuple[int, list[tuple[bytes, bytes]]] | None, bytes]:
        return None, b""


class _Buffered:
    """Hold a 200 response until it is complete, then hand it out in the other form."""

    def __init__(self) -> None:
        self._passthrough = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    def head(
        self, status: int, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        if status != 200:  # an error is JSON in both forms
            self._passthrough = True
            return status, headers
        self._headers = [(n, v) for n, v in headers if n not in (b"content-type", b"content-length")]
        return None

    def chunk(self, data: bytes) -> bytes | None:
        if self._passthrough:
            return data
        self._body += data
        return None


_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class SSEToJson(_Buffered):
    """A non-stream request answered from a streaming flight: assemble the message."""

    def end(self) -> tuple[tuple[int, list[tuple[bytes, bytes]]] | None, bytes]:
        if self._passthrough:
            return None, b""
        decoder = SSEDecoder()
        assembler = MessageAssembler()
        try:
            for event in decoder.feed(bytes(self._body)):
                assembler.feed(event)
            tail = decoder.close()
            if tail is not None:
                assembler.feed(tail)
            message = assembler.message()
        except (AssemblyError, KeyError, TypeError) as exc:
            if assembler.error is not None:
                return (502, self._headers + _JSON), events.dumps(assembler.error).encode()
            return (502, self._headers + _JSON), error_body("api_error", f"upstream stream incomplete: {exc}")
        return (200, self._headers + _JSON), events.dumps(message).encode()


class JsonToSSE(_Buffered):
    """A streaming request answered from a JSON flight: replay the message as events."""

    def end(self) -> tuple[tuple[int, list[tuple[bytes, bytes]]] | None, bytes]:
        if self._passthrough:
            return None, b""
        try:
            message = json.loads(self._body)
            events = message_to_events(message)
        except (ValueError, AttributeError, TypeError):
            return (502, self._headers + _JSON), error_body("api_error", "upstream answer is not a message")
        return (200, self._headers + _SSE), b"".join(events)


Form = Passthrough | SSEToJson | JsonToSSE


def form_for(wants_stream: bool, headers: list[tuple[bytes, bytes]]) -> Form:
    """The adapter for a listener, from what it asked and what the flight's head says."""
    content_type = next((v for n, v in headers if n == b"content-type"), b"")
    is_sse = content_type.startswith(b"text/event-stream")
    if wants_stream == is_sse or not content_type:
        return Passthrough()
    return JsonToSSE() if wants_stream else SSEToJson()
