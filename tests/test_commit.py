"""The commit gate on lists of events: no sockets, no trio, every split of every stream shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.errors import error_body
from trio_balancer.protocol import events as ev
from trio_balancer.protocol.commit import (
    CommitGate,
    Ending,
    ErrorBeforeCommit,
    block_has_content,
    is_commit_event,
)
from trio_balancer.protocol.sse import SSEDecoder, SSEEvent, encode_event

START = ev.encode(ev.message_start({"id": "msg_1", "type": "message", "role": "assistant", "content": []}))
PING = ev.PING
EMPTY_TEXT = ev.encode(ev.content_block_start(0, {"type": "text", "text": ""}))
STOP_BLOCK = ev.encode(ev.content_block_stop(0))
END = ev.encode(ev.message_delta({"stop_reason": "end_turn", "stop_sequence": None}, {"output_tokens": 3}))
MESSAGE_STOP = ev.encode(ev.message_stop())
OVERLOADED = encode_event("error", error_body("overloaded_error", "busy").decode())


def delta(text: str) -> bytes:
    return ev.encode(ev.content_block_delta(0, {"type": "text_delta", "text": text}))


def stream(*texts: str) -> list[bytes]:
    return [START, EMPTY_TEXT, PING, *(delta(t) for t in texts), STOP_BLOCK, END, MESSAGE_STOP]


def decoded(wire: bytes, cuts: list[int]) -> list[list[SSEEvent]]:
    """``wire`` cut at ``cuts`` and decoded: the batches of events a relay would feed."""
    decoder = SSEDecoder()
    batches = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        batches.append(decoder.feed(wire[previous:cut]))
        previous = cut
    tail = decoder.close()
    if tail is not None:
        batches.append([tail])
    return [b for b in batches if b]


def run(gate: CommitGate, batches: list[list[SSEEvent]]) -> list[bytes]:
    published = []
    for batch in batches:
        out = gate.feed(batch)
        if out is not None:
            published.append(out)
    return published


class TestCommitPoint:
    def test_message_start_ping_and_an_empty_block_are_held(self) -> None:
        gate = CommitGate()
        assert gate.feed(decoded(START + EMPTY_TEXT + PING, [])[0]) is None
        assert not gate.committed and gate.held_events == 3 and gate.published_events == 0

    def test_the_first_delta_commits_and_releases_the_held_events_first(self) -> None:
        gate = CommitGate()
        (batch,) = decoded(START + EMPTY_TEXT + delta("hi"), [])
        assert gate.feed(batch) == START + EMPTY_TEXT + delta("hi")
        assert gate.committed and gate.published_events == 3

    @pytest.mark.parametrize(
        ("block", "commits"),
        [
            ({"type": "text", "text": ""}, False),
            ({"type": "text", "text": "x"}, True),
            ({"type": "thinking", "thinking": ""}, False),
            ({"type": "thinking", "thinking": "hm"}, True),
            ({"type": "tool_use", "id": "t", "name": "read", "input": {}}, True),
            ({"type": "redacted_thinking", "data": "…"}, True),
        ],
    )
    def test_a_block_start_commits_only_with_content(self, block: dict[str, Any], commits: bool) -> None:
        (event,) = decoded(ev.encode(ev.content_block_start(0, block)), [])[0]
        assert block_has_content(event) is commits and is_commit_event(event) is commits

    def test_a_complete_empty_message_commits_at_its_end(self) -> None:
        gate = CommitGate()
        wire = START + END + MESSAGE_STOP
        assert b"".join(run(gate, decoded(wire, []))) == wire
        assert gate.ending() is Ending.COMPLETE

    def test_an_unparseable_block_start_counts_as_content(self) -> None:
        event = SSEEvent(
            raw=b"event: content_block_start\ndata: {\n\n", event="content_block_start", data=b"{"
        )
        assert block_has_content(event)


class TestErrors:
    def test_an_error_event_before_the_commit_point_is_this_providers_failure(self) -> None:
        gate = CommitGate()
        with pytest.raises(ErrorBeforeCommit) as caught:
            run(gate, decoded(START + PING + OVERLOADED, []))
        assert caught.value.event.event == "error" and not gate.committed

    def test_a_bare_data_error_object_is_an_error_too(self) -> None:
        bare = b"data: " + error_body("rate_limit_error", "slow down") + b"\n\n"
        with pytest.raises(ErrorBeforeCommit):
            run(CommitGate(), decoded(START + bare, []))

    def test_an_error_after_the_commit_point_is_relayed_in_its_client_form(self) -> None:
        seen: list[SSEEvent] = []

        def relay(event: SSEEvent) -> SSEEvent:
            seen.append(event)
            return SSEEvent(raw=b"event: error\ndata: {}\n\n", event="error", data=b"{}")

        gate = CommitGate(relay)
        out = b"".join(run(gate, decoded(START + delta("a") + OVERLOADED, [])))
        assert out == START + delta("a") + b"event: error\ndata: {}\n\n"
        assert seen[0].raw == OVERLOADED and gate.error_after_commit is seen[0]
        assert gate.ending() is Ending.ERROR

    def test_endings(self) -> None:
        assert CommitGate().ending() is Ending.NO_CONTENT
        held = CommitGate()
        run(held, decoded(START + PING, []))
        assert held.ending() is Ending.NO_CONTENT
        cut = CommitGate()
        run(cut, decoded(START + delta("a"), []))
        assert cut.ending() is Ending.NO_STOP

    def test_a_malformed_payload_after_the_commit_point_is_noted_not_fatal(self) -> None:
        gate = CommitGate()
        broken = b'event: content_block_delta\ndata: {"type":"content_block_delta","ind\n\n'
        out = run(gate, decoded(START + delta("a") + broken + STOP_BLOCK, []))
        assert b"".join(out).endswith(broken + STOP_BLOCK) and len(gate.malformed) == 1

    def test_shape_checks_can_be_off_for_our_own_events(self) -> None:
        gate = CommitGate(check_shape=False)
        run(gate, decoded(START + delta("a") + b"event: x\ndata: nope\n\n", []))
        assert gate.malformed == []


texts = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=12)
cut_lists = st.lists(st.integers(min_value=0, max_value=4000), max_size=40)


class TestEverySplit:
    @settings(max_examples=300, deadline=None)
    @given(texts, cut_lists)
    def test_a_good_stream_is_published_byte_for_byte_from_its_commit_point(
        self, pieces: list[str], cuts: list[int]
    ) -> None:
        wire = b"".join(stream(*pieces))
        gate = CommitGate()
        published = run(gate, decoded(wire, cuts))
        assert b"".join(published) == wire
        assert gate.ending() is Ending.COMPLETE
        # Nothing went out before the first content-bearing event was complete.
        first_content = delta(pieces[0]) if pieces else STOP_BLOCK + END
        assert len(published[0]) >= len(START + EMPTY_TEXT + PING + first_content)
        assert gate.published_events == len(stream(*pieces))
        assert gate.published_bytes == len(wire)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=3), cut_lists)
    def test_an_early_error_fails_whatever_the_split_and_publishes_nothing(
        self, held: int, cuts: list[int]
    ) -> None:
        wire = b"".join([START, EMPTY_TEXT, PING, PING][:held]) + OVERLOADED + delta("late")
        gate = CommitGate()
        published: list[bytes] = []
        with pytest.raises(ErrorBeforeCommit):
            published = run(gate, decoded(wire, cuts))
        assert published == [] and gate.published_bytes == 0

    @settings(max_examples=200, deadline=None)
    @given(texts, st.integers(min_value=0, max_value=20), cut_lists)
    def test_a_stream_cut_anywhere_after_its_commit_point_is_never_complete(
        self, pieces: list[str], keep: int, cuts: list[int]
    ) -> None:
        events = stream("first", *pieces)
        kept = events[: max(4, min(keep, len(events) - 1))]  # through the first delta, never message_stop
        gate = CommitGate()
        run(gate, decoded(b"".join(kept), cuts))
        assert gate.committed and gate.ending() is Ending.NO_STOP
        assert gate.published_bytes == len(b"".join(kept))


class TestBareErrorsAfterCommit:
    def test_a_bare_data_error_after_the_commit_point_is_an_error_too(self) -> None:
        """It reaches the client through ``relay_error`` (scrubbed) and ends the stream as one."""
        bare = b"data: " + error_body("overloaded_error", "sk-ant-api03-leakedleakedleaked") + b"\n\n"
        relayed: list[SSEEvent] = []

        def relay(event: SSEEvent) -> SSEEvent:
            relayed.append(event)
            return SSEEvent(raw=b"event: error\ndata: {}\n\n", event="error", data=b"{}")

        gate = CommitGate(relay)
        out = b"".join(run(gate, decoded(START + delta("a") + bare, [])))
        assert relayed and b"leaked" not in out and gate.ending() is Ending.ERROR

    def test_problems_are_handed_over_once(self) -> None:
        gate = CommitGate()
        run(gate, decoded(START + delta("a") + b"event: x\ndata: nope\n\n", []))
        assert len(gate.take_malformed()) == 1 and gate.take_malformed() == []
