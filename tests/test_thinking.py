"""Thinking across providers: each family's signed blocks go back only to that family.

The pure rules (``protocol/thinking.py``, the OpenAI conversion's ``reasoning_content``) are
tested directly; the relay's recording and the signatures minted for converted reasoning
through the balancer; then one conversation, driven by the official ``anthropic`` SDK, that
moves A (Anthropic, signs) -> B (another Anthropic-compatible family, signs its own, rejects
others') -> C (DeepSeek-style reasoning over OpenAI's format) -> A, with a tool call at every
step, each hop made by the preferred provider failing.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import trio

from trio_balancer.protocol.convert import RequestOptions, StreamConverter, to_anthropic_message, to_openai
from trio_balancer.protocol.sse import SSEEvent
from trio_balancer.protocol.thinking import (
    MINTED_PREFIX,
    SignatureBook,
    fit_thinking,
    mint_signature,
    remember_event,
    remember_message,
    signatures_in,
)
from trio_balancer.upstream.fit import fit_request

from .fakes import JSON_HEADERS, FakeUpstream, Reply, error_reply, oai_chunk, openai_rejection
from .helpers import CLIENT_KEY, NO_DEDUP, PROVIDER_KEY, BalancerFactory, fit_provider, fit_request_of
from .signing_fakes import Answer, ReasoningProvider, SigningProvider

THINKING = {"type": "enabled", "budget_tokens": 2048}


def thought(text: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def tool_use(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"path": "a.txt"}}


def tool_result(tool_id: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}]}


def body_of(*messages: dict[str, Any], thinking: dict[str, Any] | None = THINKING) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-opus-4-6", "max_tokens": 4096, "stream": True}
    if thinking is not None:
        body["thinking"] = thinking
    body["messages"] = [{"role": "user", "content": "read a.txt"}, *messages]
    return body


def book_with(**families: str) -> SignatureBook:
    """A book that has seen each signature (the keyword) from its family (the value)."""
    book = SignatureBook()
    for signature, family in families.items():
        book.remember(signature, family)
    return book


class TestSignatureBook:
    def test_remembers_each_signatures_family_by_a_short_digest(self) -> None:
        book = book_with(sigA="anthropic", sigB="b")
        long = "x" * 20_000
        book.remember(long, "b")
        assert book.family_of("sigA") == "anthropic" and book.family_of("sigB") == "b"
        assert book.family_of(long) == "b" and book.family_of("never") is None
        assert max(len(k) for k, _ in book.take_fresh()) <= 16  # digests, not the signatures

    def test_bounded_least_recently_used_goes_first(self) -> None:
        book = SignatureBook(max_entries=3)
        for s in ("s1", "s2", "s3"):
            book.remember(s, "b")
        assert book.family_of("s1") == "b"  # s1 used: s2 is now the oldest
        book.remember("s4", "b")
        assert len(book) == 3
        assert book.family_of("s2") is None and book.family_of("s1") == "b"

    def test_fresh_entries_are_handed_over_once_and_learned_ones_never(self) -> None:
        book = book_with(s1="b")
        woken: list[int] = []
        book.on_fresh = lambda: woken.append(1)
        book.remember("s2", "c")
        book.remember("s2", "c")  # already known: nothing new to share
        fresh = book.take_fresh()
        assert [f for _, f in fresh] == ["b", "c"] and woken == [1]
        assert book.take_fresh() == []
        key = fresh[0][0]
        other = SignatureBook()
        other.learn(key, "b")
        assert other.family_of("s1") == "b" and other.take_fresh() == []

    def test_unknown_signatures_are_asked_about_once_in_a_while(self) -> None:
        book = book_with(known="b")
        keys = book.unknown(["known", "new1", "new2", "new1"], now=0.0)
        assert len(keys) == 2
        book.checked(keys, now=0.0)
        assert book.unknown(["new1", "new2"], now=1.0) == []
        assert len(book.unknown(["new1"], now=1000.0)) == 1  # absence is not forever

    def test_signatures_in_a_request(self) -> None:
        redacted = {"type": "redacted_thinking", "data": "opaque"}
        body = body_of({"role": "assistant", "content": [thought("t", "s1"), redacted, tool_use("t1")]})
        assert signatures_in(body) == ["s1", "opaque"]

    def test_minted_signatures_are_recognisable(self) -> None:
        a, b = mint_signature(), mint_signature()
        assert a.startswith(MINTED_PREFIX) and a != b


class TestFitThinking:
    def test_an_anthropic_target_keeps_anthropics_and_unknown_blocks_untouched(self) -> None:
        """History from before the balancer, or from Anthropic directly: unknown means Anthropic's."""
        body = body_of(
            {"role": "assistant", "content": [thought("a", "sigA"), tool_use("t1")]},
            tool_result("t1"),
            {"role": "assistant", "content": [thought("old", "from-before"), {"type": "text", "text": "x"}]},
            {"role": "user", "content": "next"},
        )
        same, note = fit_thinking(body, "anthropic", book_with(sigA="anthropic"))
        assert same is body and note is None

    def test_foreign_minted_and_unsigned_blocks_are_dropped_for_anthropic(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("b", "sigB"), {"type": "text", "text": "one"}]},
            {"role": "user", "content": "two"},
            {
                "role": "assistant",
                "content": [thought("c", mint_signature()), {"type": "text", "text": "three"}],
            },
            {"role": "user", "content": "four"},
            {"role": "assistant", "content": [thought("u", ""), {"type": "text", "text": "five"}]},
            {"role": "user", "content": "six"},
        )
        before = copy.deepcopy(body)
        fitted, note = fit_thinking(body, "anthropic", book_with(sigB="b"))
        assert body == before  # never mutated
        assert [m["content"] for m in fitted["messages"] if m["role"] == "assistant"] == [
            [{"type": "text", "text": t}] for t in ("one", "three", "five")
        ]
        assert fitted["thinking"] == THINKING  # no open tool loop: thinking stays on
        assert note is not None and "3 thinking block(s)" in note and "b" in note

    def test_another_family_keeps_its_own_and_drops_anthropics(self) -> None:
        redacted = {"type": "redacted_thinking", "data": "opaqueA"}
        body = body_of(
            {"role": "assistant", "content": [thought("a", "sigA"), redacted, {"type": "text", "text": "x"}]},
            {"role": "user", "content": "y"},
            {"role": "assistant", "content": [thought("b", "sigB"), {"type": "text", "text": "z"}]},
            {"role": "user", "content": "w"},
        )
        fitted, _ = fit_thinking(body, "b", book_with(sigB="b"))
        assert fitted["messages"][1]["content"] == [{"type": "text", "text": "x"}]
        assert fitted["messages"][3]["content"][0] == thought("b", "sigB")

    def test_an_open_tool_loop_that_lost_its_leading_thinking_goes_without_thinking(self) -> None:
        """Anthropic 400s an open tool loop whose last assistant message does not start with a
        thinking block while thinking is on; "to avoid this requirement, disable thinking"."""
        body = body_of(
            {"role": "assistant", "content": [thought("b", "sigB"), tool_use("t1")]},
            tool_result("t1"),
        )
        body["context_management"] = {
            "edits": [
                {"type": "clear_thinking_20251015", "keep": "all"},
                {"type": "clear_tool_uses_20250919"},
            ]
        }
        fitted, note = fit_thinking(body, "anthropic", book_with(sigB="b"))
        assert "thinking" not in fitted
        assert fitted["context_management"] == {"edits": [{"type": "clear_tool_uses_20250919"}]}
        assert fitted["messages"][1]["content"] == [tool_use("t1")]
        assert note is not None and "without thinking" in note

    def test_an_open_tool_loop_sent_without_its_thinking_goes_without_thinking(self) -> None:
        """Claude Code leaves out the thinking of a message another model wrote: a tool call
        served under another model name, answered on Anthropic, arrives with no leading
        thinking block, which Anthropic 400s while thinking is on (found by the e2e test)."""
        body = body_of(
            {"role": "assistant", "content": [{"type": "text", "text": "Reading."}, tool_use("t1")]},
            tool_result("t1"),
        )
        fitted, note = fit_thinking(body, "anthropic", book_with())
        assert "thinking" not in fitted and fitted["messages"] == body["messages"]
        assert note is not None and "without thinking" in note and "dropped" not in note
        closed = body_of(
            {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
            {"role": "user", "content": "next"},
        )
        assert fit_thinking(closed, "anthropic", book_with()) == (closed, None)
        off = body_of(*body["messages"][1:], thinking=None)
        assert fit_thinking(off, "anthropic", book_with()) == (off, None)
        adaptive = body_of(*body["messages"][1:], thinking={"type": "adaptive"})  # may not think: no rule
        assert fit_thinking(adaptive, "anthropic", book_with()) == (adaptive, None)

    def test_open_loop_kept_thinking_when_its_leading_block_is_the_targets(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("b", "sigB"), tool_use("t1")]},
            {"role": "user", "content": "next"},
            {"role": "assistant", "content": [thought("a", "sigA"), tool_use("t2")]},
            tool_result("t2"),
        )
        fitted, note = fit_thinking(body, "anthropic", book_with(sigB="b", sigA="anthropic"))
        assert fitted["thinking"] == THINKING and note is not None
        assert fitted["messages"][3]["content"][0] == thought("a", "sigA")

    def test_thinking_off_or_no_open_loop_leaves_the_setting_alone(self) -> None:
        loop = [{"role": "assistant", "content": [thought("b", "sigB"), tool_use("t1")]}, tool_result("t1")]
        fitted, _ = fit_thinking(body_of(*loop, thinking=None), "anthropic", book_with(sigB="b"))
        assert "thinking" not in fitted and fitted["messages"][1]["content"] == [tool_use("t1")]

    def test_an_assistant_message_of_only_foreign_thinking_goes(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("b", "sigB")]}, {"role": "user", "content": "go on"}
        )
        fitted, _ = fit_thinking(body, "anthropic", book_with(sigB="b"))
        assert [m["role"] for m in fitted["messages"]] == ["user", "user"]


class TestFitRequest:
    def test_passthrough_stays_byte_identical_with_anthropics_own_thinking(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("a", "sigA"), tool_use("t1")]}, tool_result("t1")
        )
        req = fit_request_of(body)
        fitted = fit_request(fit_provider(), req, req.model, thinking=book_with(sigA="anthropic"))
        assert fitted.body == req.body and fitted.changes == ()

    def test_another_family_gets_its_own_blocks_only(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("a", "sigA"), {"type": "text", "text": "x"}]},
            {"role": "user", "content": "more"},
        )
        req = fit_request_of(body)
        b = fit_provider(name="b", preset="anthropic-compatible")
        fitted = fit_request(b, req, req.model, thinking=book_with(sigA="anthropic"))
        assert json.loads(fitted.body)["messages"][1]["content"] == [{"type": "text", "text": "x"}]
        assert any("thinking block" in c for c in fitted.changes)

    def test_a_reasoning_model_gets_prior_thinking_as_reasoning_content(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("plan", "sigA"), tool_use("t1")]}, tool_result("t1")
        )
        req = fit_request_of(body)
        sent = json.loads(fit_request(fit_provider("openai", preset="deepseek"), req, "ds").body)
        assert sent["messages"][1]["reasoning_content"] == "plan"
        assert sent["messages"][1]["tool_calls"][0]["id"] == "t1"


class TestConversion:
    def test_reasoning_content_on_every_assistant_message_of_a_tool_calling_turn(self) -> None:
        """DeepSeek: between two user messages where the model called a tool, every assistant
        message brings its reasoning back; one with none gets a placeholder (an empty string
        is refused as missing)."""
        body = body_of(
            {"role": "assistant", "content": [thought("p1", "s1"), thought("p2", "s2"), tool_use("t1")]},
            tool_result("t1"),
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "r"}, tool_use("t2")]},
            tool_result("t2"),
            {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": [thought("casual", "s3"), {"type": "text", "text": "np"}]},
            {"role": "user", "content": "bye"},
        )
        converted = to_openai(body, model="ds", options=RequestOptions(reasoning_content=True))
        assert openai_rejection(converted.body, reasoning_required=True) is None
        assert openai_rejection(to_openai(body, model="ds").body, reasoning_required=True) is not None
        assistants = [m for m in converted.body["messages"] if m["role"] == "assistant"]
        assert [m.get("reasoning_content") for m in assistants] == ["p1\n\np2", " ", " ", "casual"]
        assert not any(d.endswith(".content.thinking") for d in converted.dropped)

    def test_without_the_capability_thinking_is_dropped_as_before(self) -> None:
        body = body_of(
            {"role": "assistant", "content": [thought("p", "s"), tool_use("t1")]}, tool_result("t1")
        )
        converted = to_openai(body, model="gpt")
        assert "reasoning_content" not in converted.body["messages"][1]
        assert "messages[1].content.thinking" in converted.dropped

    def test_converted_reasoning_is_signed_by_the_balancer(self) -> None:
        converter = StreamConverter(model="m", sign=lambda: "tbx1.test")
        out: list[SSEEvent] = []
        for chunk in (
            oai_chunk({"role": "assistant", "reasoning_content": "hmm"}),
            oai_chunk({"content": "answer"}),
            oai_chunk({}, "stop", usage={"prompt_tokens": 1, "completion_tokens": 1}),
        ):
            out += converter.feed(SSEEvent(raw=chunk, event=None, data=chunk[len(b"data: ") :].strip()))
        deltas = [json.loads(e.data or b"")["delta"] for e in out if e.event == "content_block_delta"]
        assert deltas[:2] == [
            {"type": "thinking_delta", "thinking": "hmm"},
            {"type": "signature_delta", "signature": "tbx1.test"},
        ]
        kinds = [e.event for e in out]
        assert kinds.index("content_block_stop") == kinds.index("content_block_delta") + 2

    def test_converted_json_reasoning_is_signed_too(self) -> None:
        body = {"id": "x", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "a", "reasoning_content": "r"}}]}  # fmt: skip
        message = to_anthropic_message(body, model="m", sign=lambda: "tbx1.json")
        assert message["content"][0] == thought("r", "tbx1.json")

    def test_stream_events_are_remembered(self) -> None:
        book = SignatureBook()
        delta = {"type": "signature_delta", "signature": "s1"}
        remember_event(book, {"type": "content_block_delta", "index": 0, "delta": delta}, "b")
        start = {"type": "redacted_thinking", "data": "d1"}
        remember_event(book, {"type": "content_block_start", "index": 1, "content_block": start}, "b")
        empty = {"type": "thinking", "thinking": "", "signature": ""}
        remember_event(book, {"type": "content_block_start", "index": 2, "content_block": empty}, "b")
        assert book.family_of("s1") == "b" and book.family_of("d1") == "b" and len(book) == 2

    def test_a_json_message_is_remembered(self) -> None:
        book = SignatureBook()
        content = [
            thought("t", "s1"),
            {"type": "redacted_thinking", "data": "d1"},
            {"type": "text", "text": "x"},
        ]
        remember_message(book, {"content": content}, "b")
        assert book.family_of("s1") == "b" and book.family_of("d1") == "b"


TOOL = {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}  # fmt: skip


def overloaded(retry_after: int) -> Reply:
    return error_reply(529, "overloaded_error", "Overloaded", **{"retry-after": str(retry_after)})


async def test_the_relay_remembers_signatures_and_mints_them_for_converted_reasoning(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    b = SigningProvider("b", [Answer(thinking="b thinks", text="hi")])
    json_answer = {"id": "msg_j", "type": "message", "role": "assistant", "model": "m",
                   "content": [thought("j", "sigJ"), {"type": "redacted_thinking", "data": "red"},
                               {"type": "text", "text": "ok"}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
    j_up = await FakeUpstream(
        Reply(headers=list(JSON_HEADERS), steps=[json.dumps(json_answer).encode()])
    ).start(nursery)
    b_up = await FakeUpstream(b).start(nursery)
    c_up = await FakeUpstream(ReasoningProvider([Answer(thinking="c thinks", text="yo")])).start(nursery)
    config = {
        "providers": [
            {"name": "b", "kind": "anthropic", "base_url": b_up.url, "api_key": PROVIDER_KEY, "preset": "anthropic-compatible"},
            {"name": "j", "kind": "anthropic", "base_url": j_up.url, "api_key": PROVIDER_KEY},
            {"name": "c", "kind": "openai", "base_url": c_up.url, "api_key": PROVIDER_KEY, "preset": "deepseek"},
        ],
        "routes": [{"match": f"to-{n}", "targets": [{"provider": n}]} for n in "bjc"],
    }  # fmt: skip
    bal = await balancer_for(config=config)
    book = bal.app.state.thinking
    async with anthropic.AsyncAnthropic(
        base_url=bal.url, api_key=CLIENT_KEY, max_retries=0, default_headers=NO_DEDUP
    ) as client:
        got = {}
        for name in "bc":
            async with client.messages.stream(
                model=f"to-{name}",
                max_tokens=4096,
                thinking=THINKING,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "hi"}],
            ) as stream:
                got[name] = await stream.get_final_message()
        got["j"] = await client.messages.create(
            model="to-j", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    b_sig = got["b"].content[0].signature  # type: ignore[union-attr]
    c_sig = got["c"].content[0].signature  # type: ignore[union-attr]
    assert b_sig in b.signed and book.family_of(b_sig) == "b"
    assert c_sig.startswith(MINTED_PREFIX) and book.family_of(c_sig) == "c"
    assert book.family_of("sigJ") == "anthropic" and book.family_of("red") == "anthropic"


async def test_a_conversation_moves_a_b_c_a_with_tool_calls_and_every_hop_succeeds(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    a = SigningProvider("anthropic", [
        Answer(thinking="A: read it first", tool=("t1", "Read", {"path": "a.txt"})),
        overloaded(100),  # turn 2 moves to B
        Answer(text="All done."),  # turn 5, back from C
    ])  # fmt: skip
    b = SigningProvider("b", [
        Answer(text="a.txt says ok."),  # turn 2: A's thinking dropped, an open loop: no thinking
        Answer(thinking="B: now b.txt", tool=("t2", "Read", {"path": "b.txt"})),  # turn 3
        overloaded(200),  # turn 4 moves to C
    ])  # fmt: skip
    c = ReasoningProvider([
        Answer(thinking="C: and c.txt", tool=("t3", "Read", {"path": "c.txt"})),  # turn 4
        Reply(status=529, headers=list(JSON_HEADERS), steps=[b'{"error":{"message":"busy","type":"overloaded"}}']),
    ])  # fmt: skip
    ups = {n: await FakeUpstream(p).start(nursery) for n, p in {"a": a, "b": b, "c": c}.items()}
    config = {
        "providers": [
            {"name": "a", "kind": "anthropic", "base_url": ups["a"].url, "api_key": PROVIDER_KEY},
            {"name": "b", "kind": "anthropic", "base_url": ups["b"].url, "api_key": PROVIDER_KEY, "preset": "anthropic-compatible"},
            {"name": "c", "kind": "openai", "base_url": ups["c"].url, "api_key": PROVIDER_KEY, "preset": "deepseek"},
        ],
        "routes": [{"match": "claude-*", "targets": [{"provider": "a"}, {"provider": "b"}, {"provider": "c"}]}],
    }  # fmt: skip
    bal = await balancer_for(config=config)
    history: list[dict[str, Any]] = [{"role": "user", "content": "Read a.txt, then b.txt, then c.txt"}]
    finals = []
    async with anthropic.AsyncAnthropic(
        base_url=bal.url, api_key=CLIENT_KEY, max_retries=0, default_headers=NO_DEDUP
    ) as client:

        async def turn(then: dict[str, Any] | None) -> None:
            async with client.messages.stream(
                model="claude-opus-4-6",
                max_tokens=8192,
                thinking={"type": "adaptive"},
                tools=[TOOL],
                messages=history,  # type: ignore[arg-type]
            ) as stream:
                final = await stream.get_final_message()
            finals.append(final)
            history.append(
                {"role": "assistant", "content": [blk.model_dump(exclude_none=True) for blk in final.content]}
            )
            if then is not None:
                history.append(then)

        await turn(tool_result("t1"))  # 1: A thinks, calls Read
        await turn({"role": "user", "content": "Now b.txt"})  # 2: A overloaded -> B answers
        await turn(tool_result("t2"))  # 3: B thinks, calls Read
        await turn(tool_result("t3"))  # 4: B overloaded -> C reasons, calls Read
        await turn(None)  # 5: C overloaded -> back to A

    served = [f.content[-1].type for f in finals]
    assert served == ["tool_use", "text", "tool_use", "tool_use", "text"]
    assert finals[-1].content[-1].text == "All done."  # type: ignore[union-attr]
    # The client got every thinking block signed: A's and B's by them, C's by the balancer.
    sigs = [blk.signature for f in finals for blk in f.content if blk.type == "thinking"]
    assert sigs[0] in a.signed and sigs[1] in b.signed and sigs[2].startswith(MINTED_PREFIX)
    # Each provider got the history it can take: B never A's block, C the thinking as text,
    # A at the end its own block back, exactly as it made it, and no one else's.
    assert not any(blk.get("type") == "thinking" for m in b.bodies[0]["messages"] for blk in _blocks(m))
    assert "thinking" not in b.bodies[0]  # turn 2 was an open tool loop that lost its thinking
    assert b.bodies[1]["thinking"]["type"] == "enabled"  # adaptive, as that older API knows it
    reasoning = [m.get("reasoning_content") for m in c.bodies[0]["messages"] if m["role"] == "assistant"]
    assert reasoning == ["A: read it first", " ", "B: now b.txt"]
    last = a.bodies[-1]
    assert last["messages"][1]["content"][0] == history[1]["content"][0]  # A's own thinking, untouched
    assert [blk["type"] for m in last["messages"] for blk in _blocks(m) if blk["type"] == "thinking"] == [
        "thinking"
    ]
    # The open loop's last message was C's: its thinking went, and adaptive thinking (which may
    # choose not to think) has no rule that the loop start with a thinking block: kept.
    assert last["thinking"] == {"type": "adaptive"}
    # Every thinking block in the client's history is one it got (the history is its own).
    assert len(a.bodies) == 3 and len(b.bodies) == 3 and len(c.bodies) == 2


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return content if isinstance(content, list) else []
