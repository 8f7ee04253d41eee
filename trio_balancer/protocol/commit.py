"""The commit point of an Anthropic event stream, as a sans-I/O state machine.

Nothing reaches a client until the response is known to be good, so that a provider failing
early can be replaced by another one invisibly. For a stream that moment is the first
content-bearing event: a ``content_block_start`` of a non-empty block, the first
``content_block_delta``, or a ``message_delta``/``message_stop`` (a complete empty message).
``message_start`` and ``ping`` before it are held. An error before it is a failure of this
provider (:class:`ErrorBeforeCommit`); an error after it reached the client and can only end
the stream.

:class:`CommitGate` is fed decoded events and answers with the bytes to publish (None while
it holds); at the end :meth:`CommitGate.ending` says whether the stream was whole. It does no
I/O and keeps no clock, so every rule is tested on lists of events.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from trio_balancer.protocol.sse import MalformedEventData, SSEEvent
from trio_balancer.protocol.upstream_errors import is_error_data

__all__ = ["CommitGate", "Ending", "ErrorBeforeCommit", "block_has_content", "is_commit_event"]

_COMMITTING = frozenset({"content_block_delta", "message_delta", "message_stop"})


class ErrorBeforeCommit(Exception):
    """The provider sent an error before any content: this attempt failed, nobody saw it."""

    def __init__(self, event: SSEEvent) -> None:
        super().__init__("error event before the commit point")
        self.event = event


class Ending(enum.Enum):
    """How a stream ended, judged when its upstream body is over."""

    COMPLETE = "complete"  # committed, and message_stop came
    NO_CONTENT = "no_content"  # ended before the commit point: nothing was sent, try another
    ERROR = "error"  # the provider's own error event was relayed after the commit point
    NO_STOP = "no_stop"  # committed, then ended before message_stop: the client has a cut stream


def block_has_content(event: SSEEvent) -> bool:
    """A content_block_start that already carries something for the client (not an empty text)."""
    try:
        block = event.json().get("content_block") or {}
    except (MalformedEventData, AttributeError):
        return True  # odd, but it is content from this provider's point of view
    kind = block.get("type")
    if kind in ("text", "thinking"):
        return bool(block.get(kind))
    return True


def is_commit_event(event: SSEEvent) -> bool:
    """Whether the stream is committed at ``event`` (it and what follows go to the client)."""
    kind = event.event
    return kind in _COMMITTING or (kind == "content_block_start" and block_has_content(event))


def shape_problem(event: SSEEvent) -> str | None:
    """Cheap structural check of a data payload: a JSON object starts and ends with braces.

    A full parse of every event would cost more than the rest of the relay; this catches
    truncated and non-JSON payloads, which are what broken upstreams actually send. Events
    parsed anyway (errors, the commit point, usage) get the full check where they are parsed.
    """
    data = event.data
    if data and data[0] == 0x7B and (data[-1] == 0x7D or data.rstrip()[-1:] == b"}"):
        return None  # (the rstrip copy only for the rare payload with trailing whitespace)
    try:
        event.json()
    except MalformedEventData as exc:
        return str(exc)
    return None


class CommitGate:
    """Holds a stream's events until its commit point, then lets them through as they come.

    ``relay_error`` turns a provider's error event after the commit point into what the client
    may see (scrubbed of secrets; never the provider's rejection of our own key). With
    ``check_shape`` every payload gets :func:`shape_problem`; problems are collected in
    :attr:`malformed` for the caller to log, and do not stop the stream.
    """

    def __init__(
        self, relay_error: Callable[[SSEEvent], SSEEvent] = lambda e: e, *, check_shape: bool = True
    ) -> None:
        self._relay_error = relay_error
        self._check_shape = check_shape
        self._held: list[bytes] = []
        self.held_events = 0  # events held so far (before the commit point)
        self.committed = False
        self.saw_stop = False
        self.error_after_commit: SSEEvent | None = None  # the provider's own, as it sent it
        self.published_events = 0
        self.published_bytes = 0
        self.malformed: list[str] = []

    def feed(self, events: Sequence[SSEEvent]) -> bytes | None:
        """The bytes to publish for ``events``: None while held, the held ones too on commit.

        Raises :class:`ErrorBeforeCommit` for an error before the commit point.
        """
        check = self._check_shape
        if not self.committed:
            at = self._find_commit(events, check)
            if at is None:
                return None
            self.committed = True
            events = events[at:]
        out_events = events  # copied only if an error event must be rewritten
        for i, event in enumerate(events):
            kind = event.event
            if kind == "message_stop":
                self.saw_stop = True
            elif kind == "error" or (kind is None and is_error_data(event.data)):
                self.error_after_commit = event
                out_events = [*out_events[:i], self._relay_error(event), *out_events[i + 1 :]]
            elif check and event.data is not None:
                problem = shape_problem(event)
                if problem is not None:
                    self.malformed.append(problem)
        out = out_events[0].raw if len(out_events) == 1 else b"".join(e.raw for e in out_events)
        count = len(out_events)
        if self._held:
            out = b"".join(self._held) + out
            count += self.held_events
            self._held.clear()
        self.published_events += count
        self.published_bytes += len(out)
        return out

    def take_malformed(self) -> list[str]:
        """The shape problems found since the last call (for the caller to log)."""
        problems, self.malformed = self.malformed, []
        return problems

    def _find_commit(self, events: Sequence[SSEEvent], check: bool) -> int | None:
        """Index of the first event at or after which the stream is committed; None: hold all."""
        for i, event in enumerate(events):
            kind = event.event
            if kind == "error" or (kind is None and is_error_data(event.data)):
                raise ErrorBeforeCommit(event)
            if is_commit_event(event):
                self._hold(events[:i])
                return i
            if check and event.data is not None:
                problem = shape_problem(event)
                if problem is not None:
                    self.malformed.append(problem)
        self._hold(events)
        return None

    def _hold(self, events: Sequence[SSEEvent]) -> None:
        self._held.extend(e.raw for e in events)
        self.held_events += len(events)

    def ending(self) -> Ending:
        """How the stream ended, once the upstream body is over."""
        if not self.committed:
            return Ending.NO_CONTENT
        if self.error_after_commit is not None:
            return Ending.ERROR
        if not self.saw_stop:
            return Ending.NO_STOP
        return Ending.COMPLETE
