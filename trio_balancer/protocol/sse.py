"""Sans-I/O Server-Sent Events decoder and encoder.

The decoder takes bytes exactly as they come off the socket and returns every block that is
complete, each with the raw bytes it was made of. Concatenating the ``raw`` of every block the
decoder returns (plus :meth:`SSEDecoder.close`) gives back the input byte for byte, which is
what makes passthrough byte-exact while still letting us look at event names and data.

Line ends follow the WHATWG spec: ``\\r\\n``, ``\\r`` and ``\\n``. A chunk that ends in ``\\r``
completes its line at once (no waiting for a possible ``\\n``); a ``\\n`` at the start of the
next chunk is then recognised as the second half of that line end.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "EventTooLarge",
    "MalformedEventData",
    "SSEDecoder",
    "SSEError",
    "SSEEvent",
    "encode_event",
]

# Anthropic's largest single events are tool_use input deltas and non-chunked thinking
# signatures: a few KiB. OpenAI-compatible servers sometimes send a whole tool call's
# arguments in one chunk. 8 MiB is far above any real event and far below what would hurt
# a process serving hundreds of streams; anything bigger is a broken or hostile upstream.
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEError(Exception):
    """The upstream sent a stream that cannot be decoded as SSE."""


class EventTooLarge(SSEError):
    """The upstream sent one event (or an unterminated line) over the size limit."""


class MalformedEventData(SSEError):
    """An event's ``data`` is not the UTF-8 JSON the protocol promises."""


@attrs.frozen(slots=True)
class SSEEvent:
    """One block of an SSE stream, ended by a blank line (or by the end of the stream).

    ``data`` is the ``data:`` lines joined with ``\\n``, still as bytes: most events are only
    forwarded, so decoding is left to the few consumers that need the text (``json.loads``
    takes bytes and raises ``ValueError`` on invalid UTF-8). ``data`` is ``None`` for a block
    with no data line (a comment such as ``: keep-alive``, or stray blank lines), which the
    spec says not to dispatch but which passthrough still forwards.
    """

    raw: bytes
    event: str | None = None
    data: bytes | None = None
    terminated: bool = True

    def text(self) -> str:
        """The data as text; raises :class:`MalformedEventData` on invalid UTF-8."""
        try:
            return (self.data or b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedEventData(
                f"{self.event or 'message'} event: data is not valid UTF-8 (byte {exc.start}: {exc.reason})"
            ) from None

    def json(self) -> Any:
        """The data parsed as JSON; raises :class:`MalformedEventData` when it is not."""
        try:
            return json.loads(self.text())
        except json.JSONDecodeError as exc:
            raise MalformedEventData(
                f"{self.event or 'message'} event: data is not valid JSON ({exc.msg} at {exc.pos})"
            ) from None
        except RecursionError:  # JSON nested past the parser's stack (found by attack)
            raise MalformedEventData(f"{self.event or 'message'} event: data nested too deep") from None


class SSEDecoder:
    """Incremental SSE decoder: ``feed(bytes) -> [SSEEvent]``, then ``close()``."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._pos = 0  # start of the first line not parsed yet
        self._skip_lf = False  # the last chunk ended with "\r": a leading "\n" completes it
        self._event: str | None = None
        self._data: list[bytes] = []
        self._closed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._closed:
            raise RuntimeError("feed() after close()")
        if not chunk:
            return []
        buf = self._buf
        # An empty buffer means no half-built event: lines stay in it until their event ends.
        if not buf and not self._skip_lf and type(chunk) is bytes:
            whole = _one_whole_event(chunk)
            if whole is not None:
                return [whole]
        buf += chunk
        pos = self._pos
        if self._skip_lf:
            self._skip_lf = False
            if buf[pos] == 0x0A:
                pos += 1
        events: list[SSEEvent] = []
        start = 0  # start of the event being built, relative to buf
        end = len(buf)
        search = _LINE_END.search
        while pos < end:
            m = search(buf, pos)
            if m is None:
                break
            line_start = pos
            line_end, pos = m.span()
            if pos == end and buf[line_end] == 0x0D:
                self._skip_lf = True
            if line_end == line_start:
                events.append(self._dispatch(bytes(buf[start:pos]), terminated=True))
                start = pos
            else:
                self._field(buf[line_start:line_end])
        if start:
            del buf[:start]
            pos -= start
        self._pos = pos
        if len(buf) > self._max_event_bytes:
            raise EventTooLarge(f"an SSE event grew past {self._max_event_bytes} bytes without ending")
        return events

    def close(self) -> SSEEvent | None:
        """End of stream: return the last block if it had no terminating blank line."""
        self._closed = True
        if not self._buf:
            return None
        if self._pos < len(self._buf):  # a final line with no line end at all
            self._field(self._buf[self._pos :])
        event = self._dispatch(bytes(self._buf), terminated=False)
        self._buf.clear()
        self._pos = 0
        return event

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because their event is not complete yet."""
        return len(self._buf)

    def _field(self, line: bytearray) -> None:
        colon = line.find(b":")
        if colon == 0:
            return  # comment
        if colon < 0:
            name, value = bytes(line), b""
        else:
            name = bytes(line[:colon])
            value = bytes(line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :])
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # "id" and "retry" only matter to a browser reconnecting; they stay in ``raw``.

    def _dispatch(self, raw: bytes, *, terminated: bool) -> SSEEvent:
        data = self._data
        event = SSEEvent(
            raw=raw,
            event=self._event,
            data=(data[0] if len(data) == 1 else b"\n".join(data)) if data else None,
            terminated=terminated,
        )
        self._event = None
        self._data = []
        return event


def _one_whole_event(chunk: bytes) -> SSEEvent | None:
    """``chunk`` as the one event it is, when it is exactly ``event: NAME\ndata: DATA\n\n``
    or ``data: DATA\n\n`` with ``\n`` line ends (how Anthropic, OpenAI and Gemini write
    each event, one per read once a stream is under way); None for anything else.

    The same event :meth:`SSEDecoder.feed` builds line by line, for a few byte searches
    instead of a regex, two slices and a join per line (``tests/test_sse.py`` holds them
    equal); issue 20's per-event cost.
    """
    if not chunk.endswith(b"\n\n") or b"\r" in chunk:
        return None
    lines = chunk.count(b"\n")
    if lines == 2 and chunk.startswith(b"data: "):
        return SSEEvent(raw=chunk, data=chunk[6:-2])
    if lines != 3 or not chunk.startswith(b"event: "):
        return None
    end = chunk.index(b"\n")
    if not chunk.startswith(b"data: ", end + 1):
        return None
    return SSEEvent(raw=chunk, event=chunk[7:end].decode("utf-8", "replace"), data=chunk[end + 7 : -2])


def encode_event(event: str, data: str) -> bytes:
    """Encode one event the way Anthropic's API does: ``event:`` line, ``data:`` line(s)."""
    if "\n" in data or "\r" in data:
        lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        body = "".join(f"data: {line}\n" for line in lines)
    else:
        body = f"data: {data}\n"
    return f"event: {event}\n{body}\n".encode()
