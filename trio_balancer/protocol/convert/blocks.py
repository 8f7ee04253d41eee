"""The Anthropic side of a converted stream: one message's content blocks, written in order. Pure.

Every converter (OpenAI's chunks, Gemini's parts) reads a foreign stream and has to produce the
same well-formed Anthropic event sequence: ``message_start``, blocks numbered from 0 each opened
by ``content_block_start`` and closed by ``content_block_stop``, at most one text or thinking
block open at a time, then ``message_delta`` and ``message_stop``. :class:`BlockWriter` owns that
bookkeeping and the running output-token estimate; the converters own only how their format's
pieces map onto blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from trio_balancer.protocol import events
from trio_balancer.protocol.events import sse_event
from trio_balancer.protocol.sse import SSEEvent
from trio_balancer.protocol.tokens import estimate_text

__all__ = ["EMPTY_BLOCKS", "BlockWriter", "WrittenStream", "nonneg_int"]

# The content_block_start body of each streamed block kind (text and thinking grow by deltas).
EMPTY_BLOCKS: Mapping[str, Mapping[str, str]] = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


class BlockWriter:
    """Writes one Anthropic message's events; the converter decides what goes in it.

    ``sign``, when given, signs every thinking block just before it closes (converted reasoning
    carries the balancer's own signature, ``protocol/thinking.py``); a format with signatures of
    its own passes them to :meth:`sign_thinking` instead.
    """

    def __init__(self, *, model: str, message_id: str | None, sign: Callable[[], str] | None = None) -> None:
        self.model = model
        self.message_id = message_id
        self._sign = sign
        self.started = False
        self.ended = False
        self._next_index = 0
        self._open_block: tuple[str, int] | None = None  # the open text/thinking block: (kind, index)
        self.output_text_chars = 0
        self.output_estimate = 0  # estimated output tokens, for a stream that reports no usage
        self._tool_ids: set[str] = set()

    # -- message -----------------------------------------------------------------------------

    def message_start(self, upstream_id: Any, usage: Mapping[str, int]) -> SSEEvent:
        """``message_start``; the id is the caller's, else the upstream's (``msg_`` prefixed),
        else a fresh one."""
        self.started = True
        if self.message_id is None:
            self.message_id = (
                f"msg_{upstream_id}"
                if isinstance(upstream_id, str) and upstream_id
                else f"msg_{uuid.uuid4().hex}"
            )
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": dict(usage),
        }
        return sse_event(events.message_start(message))

    def message_end(self, stop_reason: str, usage: Mapping[str, int]) -> list[SSEEvent]:
        """``message_delta`` with the stop reason and final usage, then ``message_stop``."""
        self.ended = True
        stop = {"stop_reason": stop_reason, "stop_sequence": None}
        return [sse_event(events.message_delta(stop, dict(usage))), sse_event(events.message_stop())]

    # -- blocks ------------------------------------------------------------------------------

    def open(self, block: Mapping[str, Any]) -> tuple[int, SSEEvent]:
        """A new block's index and its ``content_block_start``."""
        index = self._next_index
        self._next_index += 1
        return index, sse_event(events.content_block_start(index, block))

    def stop(self, index: int) -> SSEEvent:
        return sse_event(events.content_block_stop(index))

    def is_open(self, kind: str) -> bool:
        """Whether the open text/thinking block is of ``kind``."""
        return self._open_block is not None and self._open_block[0] == kind

    def delta(self, kind: str, delta: Mapping[str, Any]) -> list[SSEEvent]:
        """``delta`` on the open block of ``kind`` ("text" or "thinking"), opening one (and
        closing the other) first when needed."""
        out: list[SSEEvent] = []
        if self._open_block is None or self._open_block[0] != kind:
            out.extend(self.close_open())
            index, start = self.open(EMPTY_BLOCKS[kind])
            out.append(start)
            self._open_block = (kind, index)
        out.append(sse_event(events.content_block_delta(self._open_block[1], delta)))
        return out

    def close_open(self) -> list[SSEEvent]:
        """Close the open text/thinking block, if any; a thinking block is signed first when the
        writer has ``sign``."""
        if self._open_block is None:
            return []
        kind, index = self._open_block
        self._open_block = None
        out = []
        if kind == "thinking" and self._sign is not None:
            delta = {"type": "signature_delta", "signature": self._sign()}
            out.append(sse_event(events.content_block_delta(index, delta)))
        out.append(self.stop(index))
        return out

    def sign_thinking(self, signature: str) -> list[SSEEvent]:
        """``signature`` on the open thinking block, else on an empty one of its own; the block
        then closes (one signature per block)."""
        out: list[SSEEvent] = []
        if not self.is_open("thinking"):
            out.extend(self.close_open())
            index, start = self.open(EMPTY_BLOCKS["thinking"])
            out.append(start)
            self._open_block = ("thinking", index)
        assert self._open_block is not None
        index = self._open_block[1]
        self._open_block = None
        delta = {"type": "signature_delta", "signature": signature}
        return [*out, sse_event(events.content_block_delta(index, delta)), self.stop(index)]

    def unique_tool_id(self, wanted: str) -> str:
        """``wanted``, or a variant of it no earlier tool_use block of this message has: two
        blocks of one id would pair the client's tool results ambiguously (found by attack)."""
        tool_id, n = wanted, 1
        while tool_id in self._tool_ids:
            n += 1
            tool_id = f"{wanted}_{n}"
        self._tool_ids.add(tool_id)
        return tool_id

    def json_delta(self, index: int, partial: str) -> SSEEvent:
        """A tool_use block's ``input_json_delta``, counted as output."""
        self.count(partial)
        delta = {"type": "input_json_delta", "partial_json": partial}
        return sse_event(events.content_block_delta(index, delta))

    def whole_tool_use(self, tool_id: str, name: str, input_json: str) -> list[SSEEvent]:
        """A complete ``tool_use`` block (start, its whole input as one delta, stop), after
        closing the open text/thinking block."""
        out = self.close_open()
        index, start = self.open({"type": "tool_use", "id": tool_id, "name": name, "input": {}})
        return [*out, start, self.json_delta(index, input_json), self.stop(index)]

    def count(self, text: str) -> None:
        """Add ``text`` to the output estimate."""
        self.output_text_chars += len(text)
        self.output_estimate += estimate_text(text)


class WrittenStream:
    """What every converter says of the message it writes through its ``_out`` writer."""

    _out: BlockWriter

    @property
    def message_id(self) -> str | None:
        return self._out.message_id

    @property
    def output_text_chars(self) -> int:
        return self._out.output_text_chars

    @property
    def ended(self) -> bool:
        return self._out.ended


def nonneg_int(value: Any) -> int:
    """A usage count as reported, or 0 for anything that is not a non-negative integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
