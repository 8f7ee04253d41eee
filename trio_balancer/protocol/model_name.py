"""The model name the client sees in an answer: the one it asked for. Pure.

A route target may rename the model (``targets = [{ provider = "deep", model = "deepseek-reasoner" }]``):
the provider then reports its own model in the stream's ``message_start`` and in a JSON
message's ``model``. The client is told the name it asked for instead, unless the operator sets
``[routing] show_upstream_model = true``: a client keys things by the model it sent (Claude Code
drops the thinking blocks of an earlier message whose model differs from the one it asked for,
so they would not come back on the next turn). Converted answers (``protocol/convert``) are
written with the client's model already.

Only the value changes: the key's string is spliced into the bytes the provider sent, so
everything else stays byte-identical, and the result is parsed again to prove the splice hit
the message's own ``model`` (not a tool input's); when it did not, the document is written
again, compactly. With no rename nothing here runs: passthrough keeps the provider's bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from .sse import SSEEvent, encode_event

__all__ = ["message_start_with_model", "message_with_model"]

# A JSON "model" key and its string value (escapes included); the value is group 1.
_MODEL_KEY = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.)*")')


def message_with_model(body: bytes, model: str) -> bytes:
    """A JSON message's bytes with its ``model`` set to ``model``; other bodies unchanged."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict) or doc.get("type") != "message":
        return body
    return _with_model(body, doc, None, model)


def message_start_with_model(event: SSEEvent, model: str) -> SSEEvent:
    """A ``message_start`` event with its message's ``model`` set to ``model``; other events,
    and events whose data is not such a message, unchanged."""
    if event.data is None or b"message_start" not in event.data:
        return event
    try:
        doc = json.loads(event.data)
    except ValueError:
        return event
    if (
        not isinstance(doc, dict)
        or doc.get("type") != "message_start"
        or not isinstance(doc.get("message"), dict)
    ):
        return event
    data = _with_model(event.data, doc, "message", model)
    if data is event.data:
        return event
    raw = (
        event.raw.replace(event.data, data, 1)
        if event.raw.count(event.data) == 1
        else encode_event(event.event or "message_start", data.decode())
    )
    return attrs.evolve(event, raw=raw, data=data)


# Each try re-parses the answer: a few, then the whole JSON is written again (an answer whose
# content names the model thousands of times before the message's own key cost seconds of CPU).
_MAX_SPLICES = 4


def _with_model(raw: bytes, doc: dict[str, Any], inner: str | None, model: str) -> bytes:
    """``raw`` (whose parse is ``doc``) with the model of ``doc`` (or of ``doc[inner]``) replaced."""
    holder = doc if inner is None else doc[inner]
    old = holder.get("model")
    if not isinstance(old, str) or old == model:
        return raw
    renamed = {**holder, "model": model}
    expected = renamed if inner is None else {**doc, inner: renamed}
    value = json.dumps(model, ensure_ascii=False).encode()
    tries = 0
    for m in _MODEL_KEY.finditer(raw):
        if json.loads(m.group(1)) == old:
            spliced = raw[: m.start(1)] + value + raw[m.end(1) :]
            if json.loads(spliced) == expected:
                return spliced
            tries += 1
            if tries >= _MAX_SPLICES:  # the same name all over a tool's input: write it anew
                break
    return json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
