"""The sans-I/O SSE decoder: every framing case, and random splits give the same events."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.protocol import sse
from trio_balancer.protocol.sse import (
    EventTooLarge,
    MalformedEventData,
    SSEDecoder,
    SSEEvent,
    encode_event,
)


def decode_all(chunks: list[bytes], **kw: int) -> list[SSEEvent]:
    d = SSEDecoder(**kw)
    out: list[SSEEvent] = []
    for c in chunks:
        out.extend(d.feed(c))
    tail = d.close()
    if tail is not None:
        out.append(tail)
    return out


def fields(events: list[SSEEvent]) -> list[tuple[str | None, bytes | None]]:
    return [(e.event, e.data) for e in events if e.data is not None]


class TestFraming:
    def test_one_event(self) -> None:
        (e,) = decode_all([b'event: ping\ndata: {"type":"ping"}\n\n'])
        assert e == SSEEvent(
            raw=b'event: ping\ndata: {"type":"ping"}\n\n', event="ping", data=b'{"type":"ping"}'
        )

    def test_several_events_in_one_chunk(self) -> None:
        wire = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\nevent: c\ndata: 3\n\n"
        events = SSEDecoder().feed(wire)
        assert fields(events) == [("a", b"1"), ("b", b"2"), ("c", b"3")]
        assert b"".join(e.raw for e in events) == wire

    @pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
    def test_line_ends(self, eol: bytes) -> None:
        wire = b"event: x" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + eol
        events = decode_all([wire])
        assert fields(events) == [("x", b"1"), (None, b"2")]
        assert b"".join(e.raw for e in events) == wire

    def test_crlf_split_between_chunks(self) -> None:
        """A chunk ending in \\r completes the line now; the \\n that follows is not a blank line."""
        d = SSEDecoder()
        assert d.feed(b"data: 1\r") == []
        assert d.feed(b"\n") == []  # second half of CRLF, not an empty line
        (e,) = d.feed(b"\r\n")
        assert (e.event, e.data) == (None, b"1")
        assert e.raw == b"data: 1\r\n\r\n"

    def test_event_dispatched_at_trailing_cr(self) -> None:
        """The blank line's \\r arrives: dispatch now, don't wait for its \\n."""
        d = SSEDecoder()
        (e,) = d.feed(b"data: 1\r\n\r")
        assert e.data == b"1"
        (e2,) = d.feed(b"\ndata: 2\r\n\r\n")
        assert e2.data == b"2"
        assert e.raw + e2.raw == b"data: 1\r\n\r\ndata: 2\r\n\r\n"

    def test_comments_are_kept_in_raw_but_not_dispatched_as_data(self) -> None:
        wire = b": keep-alive\n\nevent: a\n: inline comment\ndata: 1\n\n"
        events = decode_all([wire])
        assert fields(events) == [("a", b"1")]
        assert events[0].data is None and events[0].raw == b": keep-alive\n\n"
        assert b"".join(e.raw for e in events) == wire

    def test_multi_line_data(self) -> None:
        (e,) = decode_all([b"data: line one\ndata: line two\ndata:\ndata:  spaced\n\n"])
        assert e.data == b"line one\nline two\n\n spaced"

    def test_field_without_space_and_without_colon(self) -> None:
        (e,) = decode_all([b"event:tight\ndata:x\ndata\n\n"])
        assert (e.event, e.data) == ("tight", b"x\n")

    def test_id_and_retry_ignored_but_kept(self) -> None:
        wire = b"id: 7\nretry: 100\nevent: a\ndata: 1\n\n"
        (e,) = decode_all([wire])
        assert (e.event, e.data, e.raw) == ("a", b"1", wire)

    def test_final_event_without_blank_line(self) -> None:
        events = decode_all([b"event: a\ndata: 1\n\nevent: message_stop\ndata: {}"])
        assert fields(events) == [("a", b"1"), ("message_stop", b"{}")]
        assert events[-1].terminated is False
        assert events[-1].raw == b"event: message_stop\ndata: {}"

    def test_final_event_with_one_newline(self) -> None:
        events = decode_all([b"event: a\ndata: 1\n"])
        assert fields(events) == [("a", b"1")]
        assert not events[0].terminated

    def test_event_split_inside_utf8_character(self) -> None:
        wire = "data: 你好😀\n\n".encode()
        for i in range(1, len(wire)):
            (e,) = decode_all([wire[:i], wire[i:]])
            assert e.text() == "你好😀"

    def test_empty_feed_is_a_no_op(self) -> None:
        d = SSEDecoder()
        assert d.feed(b"") == []
        assert d.close() is None

    def test_feed_after_close_is_a_bug(self) -> None:
        d = SSEDecoder()
        d.close()
        with pytest.raises(RuntimeError):
            d.feed(b"data: 1\n\n")

    def test_pending_bytes(self) -> None:
        d = SSEDecoder()
        d.feed(b"data: 1\n\ndata: par")
        assert d.pending_bytes == len(b"data: par")


class TestBadInput:
    def test_invalid_utf8_is_kept_and_reported_clearly(self) -> None:
        wire = b'event: content_block_delta\ndata: {"t":"\xff\xfe"}\n\n'
        (e,) = decode_all([wire])
        assert e.raw == wire  # passthrough still forwards it exactly
        with pytest.raises(MalformedEventData, match="not valid UTF-8"):
            e.text()
        with pytest.raises(MalformedEventData):
            e.json()

    def test_invalid_utf8_in_event_name_does_not_crash(self) -> None:
        (e,) = decode_all([b"event: a\xffb\ndata: 1\n\n"])
        assert e.event == "a\ufffdb"

    def test_malformed_json(self) -> None:
        (e,) = decode_all([b'event: message_delta\ndata: {"type": "message_del\n\n'])
        with pytest.raises(MalformedEventData, match="message_delta event: data is not valid JSON"):
            e.json()

    def test_json_ok(self) -> None:
        (e,) = decode_all([b'data: {"a": [1, "\xe4\xbd\xa0"]}\n\n'])
        assert e.json() == {"a": [1, "你"]}

    def test_event_too_large(self) -> None:
        d = SSEDecoder(max_event_bytes=100)
        d.feed(b"data: " + b"x" * 90)
        with pytest.raises(EventTooLarge):
            d.feed(b"x" * 20)

    def test_many_small_events_never_hit_the_limit(self) -> None:
        d = SSEDecoder(max_event_bytes=100)
        events = d.feed(b"data: 0123456789\n\n" * 100)
        assert len(events) == 100

    def test_garbage_bytes_do_not_crash(self) -> None:
        garbage = bytes(range(256)) * 4
        events = decode_all([garbage[i : i + 7] for i in range(0, len(garbage), 7)])
        assert b"".join(e.raw for e in events) == garbage


class TestEncode:
    def test_round_trip(self) -> None:
        wire = encode_event("content_block_delta", '{"x":"你好"}')
        assert wire == 'event: content_block_delta\ndata: {"x":"你好"}\n\n'.encode()
        (e,) = decode_all([wire])
        assert (e.event, e.text()) == ("content_block_delta", '{"x":"你好"}')

    def test_multi_line_data_round_trips(self) -> None:
        (e,) = decode_all([encode_event("x", "a\nb\r\nc\rd")])
        assert e.text() == "a\nb\nc\nd"


# -- properties -------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=30)
_event = st.tuples(
    st.sampled_from(["message_start", "content_block_delta", "ping", "error", "x-unknown"]),
    st.lists(_text, min_size=1, max_size=3),
)
_eol = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[str | None, bytes | None]]]:
    """A stream of events with mixed line ends and comments, and the events it encodes."""
    events = draw(st.lists(_event, max_size=12))
    parts: list[str] = []
    expected: list[tuple[str | None, bytes | None]] = []
    for name, data_lines in events:
        eol = draw(_eol)
        if draw(st.booleans()):
            parts.append(": comment" + eol)
        parts.append(f"event: {name}{eol}")
        parts.extend(f"data: {line}{eol}" for line in data_lines)
        parts.append(eol)
        expected.append((name, "\n".join(data_lines).encode()))
    return "".join(parts).encode(), expected


def split_at(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    bounds = [0, *points, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(min_value=0), max_size=40))
def test_any_split_gives_the_same_events(stream: tuple[bytes, list], cuts: list[int]) -> None:
    wire, expected = stream
    whole = decode_all([wire])
    split = decode_all(split_at(wire, cuts))
    assert fields(split) == fields(whole) == expected
    assert b"".join(e.raw for e in split) == wire


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=30))
def test_arbitrary_bytes_round_trip_raw(wire: bytes, cuts: list[int]) -> None:
    """Whatever an upstream sends, the raw bytes out equal the bytes in, and nothing raises."""
    events = decode_all(split_at(wire, cuts))
    assert b"".join(e.raw for e in events) == wire
    assert fields(events) == fields(decode_all([wire]))


ODD_WHOLE_CHUNKS = [
    b"event:x\ndata: y\n\n", b"event: \ndata: \n\n", b"data:\n\n", b"event: a\n\n\n", b"event: a\nid: 1\n\n",
    b"event: a\r\ndata: b\n\n", b": ping\n\n", b"data: a\ndata: b\n\n", b"event: a\ndata:  two spaces\n\n",
    b"retry: 5\n\n", b"\n\n", b"event: \xff\ndata: \xfe\n\n",
]  # fmt: skip
_one_event_chunks = st.one_of(
    st.builds(
        lambda name, data: f"event: {name}\ndata: {data}\n\n".encode(),
        st.text(max_size=20),
        st.text(max_size=40),
    ),
    st.builds(lambda data: f"data: {data}\n\n".encode(), st.text(max_size=40)),
    st.binary(max_size=60).map(lambda b: b"event: " + b + b"\ndata: " + b + b"\n\n"),
    st.binary(max_size=60).map(lambda b: b + b"\n\n"),
    st.sampled_from(ODD_WHOLE_CHUNKS),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_one_event_chunks, min_size=1, max_size=6))
def test_whole_event_chunks_decode_as_byte_by_byte(chunks: list[bytes]) -> None:
    """A chunk that is one whole event takes a short path (``_one_whole_event``); it must
    give exactly what the line-by-line decoder gives for the same chunks."""
    fast = decode_all(chunks)
    with mock.patch.object(sse, "_one_whole_event", lambda chunk: None):
        slow = decode_all(chunks)
    assert [(e.raw, e.event, e.data, e.terminated) for e in fast] == [
        (e.raw, e.event, e.data, e.terminated) for e in slow
    ]
