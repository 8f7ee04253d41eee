"""Attack 18: the shared BlockWriter under OpenAI's and Gemini's converters, fed adversarial
chunk sequences: the Anthropic events must always be well formed, and nothing but a
ConversionError (or UpstreamStreamError) may escape."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_balancer.protocol.convert.errors import ConversionError
from trio_balancer.protocol.convert.gemini_stream import GeminiStreamConverter
from trio_balancer.protocol.convert.stream import StreamConverter
from trio_balancer.protocol.sse import SSEEvent


def ev(payload: Any) -> SSEEvent:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return SSEEvent(raw=b"data: " + data + b"\n\n", data=data)


def check_well_formed(events: list[SSEEvent], *, ended: bool, unique_ids: bool = True) -> None:
    """message_start first, each index started once and in order, deltas only to open blocks
    of the right type, every block stopped exactly once, message_delta then message_stop last."""
    kinds = [e.event for e in events]
    assert kinds and kinds[0] == "message_start", kinds
    assert kinds.count("message_start") == 1, kinds
    open_blocks: dict[int, str] = {}
    seen: set[int] = set()
    ids: list[str] = []
    i = 1
    for e in events[1:]:
        body = json.loads(e.data or b"")
        assert body["type"] == e.event
        if e.event == "content_block_start":
            idx = body["index"]
            assert idx not in seen, f"index {idx} started twice: {kinds}"
            assert idx == len(seen), f"index {idx} out of order"
            seen.add(idx)
            block = body["content_block"]
            open_blocks[idx] = block["type"]
            if block["type"] == "tool_use":
                assert block["name"], block
                ids.append(block["id"])
        elif e.event == "content_block_delta":
            idx = body["index"]
            assert idx in open_blocks, f"delta to closed/unknown block {idx}: {kinds}"
            d = body["delta"]["type"]
            allowed = {
                "text": {"text_delta"},
                "thinking": {"thinking_delta", "signature_delta"},
                "tool_use": {"input_json_delta"},
            }[open_blocks[idx]]
            assert d in allowed, (open_blocks[idx], d)
        elif e.event == "content_block_stop":
            idx = body["index"]
            assert idx in open_blocks, f"stop of closed/unknown block {idx}"
            del open_blocks[idx]
        elif e.event == "message_delta":
            assert not open_blocks, f"message_delta with blocks open: {open_blocks}"
            assert events[i + 1].event == "message_stop" and i + 2 == len(events), kinds
            break
        else:
            raise AssertionError(f"unexpected {e.event}")
        i += 1
    if ended:
        assert kinds[-2:] == ["message_delta", "message_stop"], kinds
    if unique_ids:
        assert len(ids) == len(set(ids)), f"duplicate tool_use ids {ids}"


TOLERATE: tuple[type[Exception], ...] = ()  # every odd chunk is a ConversionError now (found by attack)


def run(conv: Any, chunks: list[Any], unique_ids: bool = True) -> None:
    out: list[SSEEvent] = []
    try:
        for c in chunks:
            out += conv.feed(ev(c))
        out += conv.close()
    except TOLERATE:
        return
    except ConversionError:  # UpstreamStreamError is one too
        if out:
            check_well_formed(out, ended=False, unique_ids=unique_ids)
        return
    check_well_formed(out, ended=True, unique_ids=unique_ids)
    if conv.ended:
        assert conv.feed(ev(chunks[-1] if chunks else {})) == []


# -- OpenAI -----------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=3), st.lists(st.integers(), max_size=2))
small_text = st.text(alphabet='ab {}"', max_size=4)
tool_call = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.integers(0, 2), junk),
        "id": st.one_of(st.sampled_from(["call_a", "call_b", ""]), junk),
        "function": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.one_of(st.sampled_from(["f", "g", ""]), junk),
                    "arguments": st.one_of(small_text, junk),
                },
            ),
            junk,
        ),
    },
)
delta = st.fixed_dictionaries(
    {},
    optional={
        "content": st.one_of(
            small_text,
            st.lists(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("text"), "text": small_text}),
                    st.fixed_dictionaries(
                        {"type": st.just("thinking"), "thinking": st.one_of(small_text, junk)}
                    ),
                    junk,
                ),
                max_size=3,
            ),
            junk,
        ),
        "reasoning_content": st.one_of(small_text, junk),
        "refusal": st.one_of(small_text, junk),
        "tool_calls": st.one_of(st.lists(st.one_of(tool_call, junk), max_size=3), junk),
    },
)
choice = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.just(0), junk),
        "delta": st.one_of(delta, junk),
        "finish_reason": st.one_of(st.sampled_from(["stop", "tool_calls", "length", None]), junk),
    },
)
usage = st.fixed_dictionaries(
    {},
    optional={"prompt_tokens": st.one_of(st.integers(0, 9), junk), "completion_tokens": st.integers(0, 9),
              "prompt_tokens_details": st.one_of(st.fixed_dictionaries({"cached_tokens": st.integers(0, 9)}), junk)},
)  # fmt: skip
oai_chunk = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.just("c1"), junk),
            "choices": st.one_of(st.lists(st.one_of(choice, junk), max_size=2), junk),
            "usage": st.one_of(usage, junk),
        },
    ),
    st.just(b"[DONE]"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(oai_chunk, max_size=8), st.booleans())
def test_openai_stream_is_always_well_formed_or_a_conversion_error(chunks: list[Any], sign: bool) -> None:
    run(
        StreamConverter(model="m", message_id="msg_x", sign=(lambda: "sig") if sign else None),
        chunks,
        unique_ids=False,
    )


# -- Gemini -----------------------------------------------------------------------------------

part = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "text": st.one_of(small_text, junk),
            "thought": st.one_of(st.booleans(), junk),
            "thoughtSignature": st.one_of(st.sampled_from(["s1", ""]), junk),
            "functionCall": st.one_of(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["f", "g"])},
                    optional={
                        "id": st.sampled_from(["x", "x_1", "x_2", "y"]),
                        "args": st.one_of(st.dictionaries(st.sampled_from("ab"), st.integers()), junk),
                    },
                ),
                junk,
            ),
        },
    ),
    junk,
)
candidate = st.fixed_dictionaries(
    {},
    optional={
        "content": st.one_of(
            st.fixed_dictionaries({}, optional={"parts": st.one_of(st.lists(part, max_size=4), junk)}), junk
        ),
        "finishReason": st.one_of(st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", ""]), junk),
    },
)
gem_chunk = st.fixed_dictionaries(
    {},
    optional={
        "candidates": st.one_of(st.lists(st.one_of(candidate, junk), max_size=2), junk),
        "usageMetadata": st.one_of(
            st.fixed_dictionaries({}, optional={"promptTokenCount": st.one_of(st.integers(0, 9), junk),
                                                 "candidatesTokenCount": st.integers(0, 9),
                                                 "cachedContentTokenCount": st.integers(0, 9)}),
            junk,
        ),
        "responseId": st.one_of(st.just("r1"), junk),
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(gem_chunk, max_size=8))
def test_gemini_stream_is_always_well_formed_or_a_conversion_error(chunks: list[Any]) -> None:
    run(GeminiStreamConverter(model="m", message_id="msg_x"), chunks)


# -- minimal cases found ----------------------------------------------------------------------


def _events(conv: Any, chunks: list[Any]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for c in chunks:
        out += conv.feed(ev(c))
    return out + conv.close()


def test_openai_choices_not_a_list_is_a_conversion_error() -> None:
    with contextlib.suppress(ConversionError):
        _events(StreamConverter(model="m"), [{"choices": 1}])


def test_openai_tool_calls_not_a_list_is_a_conversion_error() -> None:
    with contextlib.suppress(ConversionError):
        _events(StreamConverter(model="m"), [{"choices": [{"delta": {"tool_calls": 1}}]}])


def test_openai_tool_call_function_not_an_object_is_a_conversion_error() -> None:
    with contextlib.suppress(ConversionError):
        _events(
            StreamConverter(model="m"),
            [{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]}],
        )


def test_gemini_renamed_duplicate_call_id_is_still_unique() -> None:
    calls = [{"functionCall": {"name": "f", "id": i}} for i in ("x", "x_2", "x")]
    out = _events(
        GeminiStreamConverter(model="m", message_id="msg_x"),
        [{"candidates": [{"content": {"parts": calls}, "finishReason": "STOP"}]}],
    )
    ids = [json.loads(e.data or b"")["content_block"]["id"] for e in out if e.event == "content_block_start"]
    assert len(set(ids)) == 3, ids


# -- well-typed sequences only (the junk above dilutes the interesting interleavings) ---------

_name = st.sampled_from(["f", "g", None])
_tc = st.builds(
    lambda i, cid, name, args: {"index": i, **({"id": cid} if cid else {}),
                                "function": {**({"name": name} if name else {}), **({"arguments": args} if args is not None else {})}},
    st.integers(0, 2), st.sampled_from(["call_a", "call_b", None]), _name, st.one_of(st.none(), st.sampled_from(['{"a"', ':1}', ""])),
)  # fmt: skip
_delta = st.fixed_dictionaries(
    {},
    optional={
        "content": st.sampled_from(["hi", "", None]),
        "reasoning_content": st.sampled_from(["hmm", "", None]),
        "refusal": st.sampled_from(["no", None]),
        "tool_calls": st.lists(_tc, max_size=2),
    },
)
_typed_chunk = st.one_of(
    st.builds(
        lambda d, f, u: {"id": "c", "choices": [{"index": 0, "delta": d, "finish_reason": f}], **({"usage": u} if u else {})},
        _delta, st.sampled_from([None, None, None, "stop", "tool_calls", "length"]),
        st.one_of(st.none(), st.just({"prompt_tokens": 3, "completion_tokens": 2})),
    ),
    st.just({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
    st.just(b"[DONE]"),
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_typed_chunk, max_size=12), st.booleans())
def test_openai_typed_sequences_always_well_formed(chunks: list[Any], sign: bool) -> None:
    # ids are checked apart (test_openai_two_calls_with_one_id_get_distinct_tool_use_ids)
    run(
        StreamConverter(model="m", message_id="msg_x", sign=(lambda: "sig") if sign else None),
        chunks,
        unique_ids=False,
    )


_gpart = st.one_of(
    st.builds(lambda t, th, sig: {"text": t, **({"thought": True} if th else {}), **({"thoughtSignature": sig} if sig else {})},
              st.sampled_from(["a", ""]), st.booleans(), st.sampled_from([None, "s"])),
    st.builds(lambda n, i, sig: {"functionCall": {"name": n, **({"id": i} if i else {}), "args": {}}, **({"thoughtSignature": sig} if sig else {})},
              st.sampled_from(["f", "g"]), st.sampled_from([None, "x", "y"]), st.sampled_from([None, "s"])),
)  # fmt: skip
_gchunk = st.builds(
    lambda parts, fin, u: {"candidates": [{"content": {"parts": parts}, **({"finishReason": fin} if fin else {})}],
                           **({"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}} if u else {})},
    st.lists(_gpart, max_size=4), st.sampled_from([None, None, "STOP", "MAX_TOKENS"]), st.booleans(),
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_gchunk, max_size=8))
def test_gemini_typed_sequences_always_well_formed(chunks: list[Any]) -> None:
    run(GeminiStreamConverter(model="m", message_id="msg_x"), chunks)


def test_openai_two_calls_with_one_id_get_distinct_tool_use_ids() -> None:
    """Gemini's converter renames a repeated call id; OpenAI's relays both blocks with one id
    (the client can then not pair its two tool_results)."""
    calls = [{"index": i, "id": "call_a", "function": {"name": "f", "arguments": "{}"}} for i in (0, 1)]
    out = _events(
        StreamConverter(model="m"),
        [
            {"choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": "tool_calls"}]},
            b"[DONE]",
        ],
    )
    ids = [json.loads(e.data or b"")["content_block"]["id"] for e in out if e.event == "content_block_start"]
    assert len(set(ids)) == 2, ids
