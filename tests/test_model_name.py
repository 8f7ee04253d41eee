"""The client's model name put back into a renamed target's answer (``protocol/model_name.py``)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from trio_balancer.protocol import events
from trio_balancer.protocol.model_name import message_start_with_model, message_with_model
from trio_balancer.protocol.sse import SSEDecoder, SSEEvent


def _message(model: str, **extra: object) -> dict[str, object]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}, **extra}  # fmt: skip


def _decoded(raw: bytes) -> SSEEvent:
    [event] = SSEDecoder().feed(raw)
    return event


class TestMessageStart:
    def test_only_the_model_value_changes(self) -> None:
        """The provider's bytes are kept, spacing and key order included, but for the value."""
        raw = b'event: message_start\ndata: {"type": "message_start", "message": {"model": "deepseek-reasoner", "id": "m"}}\n\n'
        out = message_start_with_model(_decoded(raw), "claude-sonnet-4-6")
        assert out.raw == raw.replace(b"deepseek-reasoner", b"claude-sonnet-4-6")
        assert json.loads(out.data or b"")["message"]["model"] == "claude-sonnet-4-6"

    def test_same_model_is_the_same_event(self) -> None:
        event = events.sse_event(events.message_start(_message("claude-x")))
        assert message_start_with_model(event, "claude-x") is event

    def test_other_events_untouched(self) -> None:
        """A delta that mentions a model in its text, a ping, a comment: never rewritten."""
        for event in (
            events.sse_event(events.content_block_delta(0, {"type": "text_delta", "text": '"model": "a"'})),
            events.sse_event(events.ping()),
            SSEEvent(raw=b": keep-alive\n\n"),
            SSEEvent(raw=b"event: message_start\ndata: {nope\n\n", event="message_start", data=b"{nope"),
        ):
            assert message_start_with_model(event, "claude-x") is event

    def test_multiline_data_is_written_again(self) -> None:
        """Data split over several ``data:`` lines cannot be spliced: it is encoded anew."""
        raw = b'event: message_start\ndata: {"type": "message_start",\ndata:  "message": {"model": "up"}}\n\n'
        out = message_start_with_model(_decoded(raw), "claude-x")
        again = _decoded(out.raw)
        assert json.loads(again.data or b"") == {"type": "message_start", "message": {"model": "claude-x"}}


class TestJsonMessage:
    def test_only_the_model_value_changes(self) -> None:
        body = json.dumps(_message("glm-4.6"), indent=1).encode()
        assert message_with_model(body, "claude-opus-4-6") == body.replace(b'"glm-4.6"', b'"claude-opus-4-6"')

    def test_a_tool_input_named_model_is_not_the_message_model(self) -> None:
        """A ``model`` key inside a tool call's input, before the message's own, is left alone."""
        tool = {"type": "tool_use", "id": "t", "name": "pick", "input": {"model": "up"}}
        doc = {"type": "message", "content": [tool], "model": "up"}
        out = json.loads(message_with_model(json.dumps(doc).encode(), "claude-x"))
        assert out["model"] == "claude-x"
        assert out["content"][0]["input"] == {"model": "up"}

    def test_non_messages_untouched(self) -> None:
        for body in (b"not json", b'{"type": "error", "model": "a"}', b"[1]"):
            assert message_with_model(body, "claude-x") is body

    @given(st.text(), st.text(), st.text())
    def test_any_names(self, upstream: str, client: str, text: str) -> None:
        """Whatever the names and the text around them, the result is the message with the
        client's model and nothing else changed."""
        doc = _message(upstream, content=[{"type": "text", "text": text}])
        out = json.loads(message_with_model(json.dumps(doc).encode(), client))
        assert out == {**doc, "model": client}
        start = events.sse_event(events.message_start(doc))
        renamed = message_start_with_model(start, client)
        assert json.loads(renamed.data or b"") == events.message_start({**doc, "model": client})
        assert json.loads(_decoded(renamed.raw).data or b"") == json.loads(renamed.data or b"")
