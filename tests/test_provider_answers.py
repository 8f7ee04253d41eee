"""What providers really send: usage in JSON answers, errors inside 200s, and the OpenAI-
compatible stream shapes of Kimi, Groq, OpenAI refusals, OpenRouter and Mistral.

The fixtures are written from each provider's public documentation of its format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

from trio_balancer.protocol.convert import (
    StreamConverter,
    UpstreamStreamError,
    to_anthropic_message,
    to_openai,
)
from trio_balancer.protocol.convert.request import user_digest
from trio_balancer.protocol.reshape import MessageAssembler
from trio_balancer.protocol.sse import SSEDecoder

from .fakes import (
    JSON_HEADERS,
    OAI_DONE,
    FakeUpstream,
    Pause,
    Reply,
    anthropic_error,
    anthropic_text_events,
    oai,
    oai_chunk,
    sse,
)
from .helpers import JSON_BODY, PROVIDER_KEY, Balancer, BalancerFactory, assert_error, wait_for_listeners


def convert(chunks: list[bytes]) -> dict[str, Any]:
    """An OpenAI stream through the converter, assembled into the Anthropic message a client sees."""
    converter = StreamConverter(model="claude-x")
    decoder = SSEDecoder()
    assembler = MessageAssembler()
    for event in decoder.feed(b"".join(chunks)):
        for out in converter.feed(event):
            assembler.feed(out)
    for out in converter.close():
        assembler.feed(out)
    return assembler.message()


def anthropic_json(usage: dict[str, Any]) -> bytes:
    return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-6",
                       "content": [{"type": "text", "text": "seven words of answer right here"}],
                       "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}).encode()  # fmt: skip


# An OpenAI usage object with cached prompt tokens: 112 in, of which 100 read from the cache.
CACHED_USAGE = {"prompt_tokens": 112, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 100}}


def openai_json(usage: dict[str, Any]) -> bytes:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                       "usage": usage}).encode()  # fmt: skip


def ledger_config(tmp_path: Path, upstream: FakeUpstream, kind: str = "anthropic") -> dict[str, Any]:
    base = upstream.url + ("/v1" if kind == "openai" else "")
    return {
        "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
        "providers": [{"name": "p", "kind": kind, "base_url": base, "api_key": PROVIDER_KEY}],
    }


class TestUsageRead:
    """Exact reported usage on every path (the issue: JSON answers were billed as an estimate)."""

    USAGE: ClassVar[dict[str, int]] = {
        "input_tokens": 12,
        "output_tokens": 7,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 30,
    }

    def check(self, row: dict[str, Any], *, cache: bool = True) -> None:
        assert row["usage_source"] == "reported", row
        assert (row["input_tokens"], row["output_tokens"]) == (12, 7)
        if cache:
            assert (row["cache_read_input_tokens"], row["cache_creation_input_tokens"]) == (100, 30)

    async def test_json(self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path) -> None:
        upstream.script(Reply(headers=JSON_HEADERS, steps=[anthropic_json(self.USAGE)]))
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        assert (await b.client.post("/v1/messages", json=JSON_BODY)).status_code == 200
        self.check((await b.ledger_rows(1))[0])

    async def test_stream(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        events = anthropic_text_events(["seven words"], input_tokens=12)
        start = json.loads(events[0].split(b"data: ", 1)[1])
        start["message"]["usage"] = {**self.USAGE, "output_tokens": 1}
        events[0] = sse("message_start", start)
        events[-2] = sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                           "usage": {"output_tokens": 7}})  # fmt: skip
        upstream.script(Reply(steps=events))
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        await b.client.post("/v1/messages", json={**JSON_BODY, "stream": True})
        self.check((await b.ledger_rows(1))[0])

    async def test_converted_json(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        usage = CACHED_USAGE
        upstream.script(Reply(headers=JSON_HEADERS, steps=[openai_json(usage)]))
        b = await balancer_for(config=ledger_config(tmp_path, upstream, "openai"))
        assert (await b.client.post("/v1/messages", json=JSON_BODY)).status_code == 200
        row = (await b.ledger_rows(1))[0]
        assert (row["usage_source"], row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"]) == (
            "reported", 12, 7, 100)  # fmt: skip

    async def test_converted_stream(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        usage = CACHED_USAGE
        chunks = [
            oai_chunk({"role": "assistant", "content": "hi"}),
            oai_chunk({}, "stop"),
            oai_chunk(usage=usage),
            OAI_DONE,
        ]
        upstream.script(Reply(steps=chunks))
        b = await balancer_for(config=ledger_config(tmp_path, upstream, "openai"))
        await b.client.post("/v1/messages", json={**JSON_BODY, "stream": True})
        row = (await b.ledger_rows(1))[0]
        assert (row["usage_source"], row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"]) == (
            "reported", 12, 7, 100)  # fmt: skip

    async def test_follower_and_cache_hit(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        """The leader's JSON usage is exact; a follower and a cache hit cost nothing upstream."""
        whole = anthropic_json(self.USAGE)
        hold = Pause()
        upstream.script(Reply(headers=JSON_HEADERS, steps=[whole[:20], hold, whole[20:]]))
        b = await balancer_for(config=ledger_config(tmp_path, upstream))

        async def post() -> None:
            assert (await b.client.post("/v1/messages", json=JSON_BODY)).status_code == 200

        async with trio.open_nursery() as n:
            n.start_soon(post)
            await hold.wait_reached()  # the leader's answer is half sent
            n.start_soon(post)  # joins the flight
            await wait_for_listeners(b.app, 2)
            hold.release()
        await b.client.post("/v1/messages", json=JSON_BODY)  # from the cache
        rows = {r["dedup_role"]: r for r in await b.ledger_rows(3)}
        assert len(upstream.received) == 1 and set(rows) == {"leader", "follower", "cache"}
        self.check(rows["leader"])
        assert all(
            rows[r]["usage_source"] == "shared" and rows[r]["cost_usd"] == 0 for r in ("follower", "cache")
        )


class TestErrorsInside200:
    OVERLOADED = anthropic_error("overloaded_error", "Overloaded")

    async def test_json_error_body_fails_over_and_is_not_cached(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        bad = await FakeUpstream(Reply(headers=JSON_HEADERS, steps=[self.OVERLOADED])).start(nursery)
        good = await FakeUpstream(
            Reply(headers=JSON_HEADERS, steps=[anthropic_json({"input_tokens": 3, "output_tokens": 4})])
        ).start(nursery)
        config = {
            "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
            "providers": [{"name": "bad", "kind": "anthropic", "base_url": bad.url, "api_key": PROVIDER_KEY},
                          {"name": "good", "kind": "anthropic", "base_url": good.url, "api_key": PROVIDER_KEY}],
        }  # fmt: skip
        b = await balancer_for(config=config)
        r = await b.client.post("/v1/messages", json=JSON_BODY)
        assert r.status_code == 200 and r.json()["type"] == "message"
        assert b.app.registry is not None and b.app.registry.runtimes["bad"].health.state.value == "cooling"
        row = (await b.ledger_rows(1))[0]
        assert [a["provider"] for a in row["attempts"]] == ["bad", "good"] and "overloaded_error" in row[
            "attempts"
        ][0]["error"]

    async def test_json_error_body_alone_is_answered_with_its_status(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        upstream.script(lambda _r: Reply(headers=JSON_HEADERS, steps=[self.OVERLOADED]))
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        for stream in (False, True):  # a streaming retry must not get a message made of the error
            r = await b.client.post("/v1/messages", json={**JSON_BODY, "stream": stream})
            assert_error(r, 529, "overloaded_error")
        rows = await b.ledger_rows(2)
        assert all(
            (row["status"], row["error_type"], row["usage_source"]) == (529, "overloaded_error", "none")
            for row in rows
        )
        assert len(upstream.received) == 2 and len(b.app.cache) == 0  # never cached

    async def test_stream_starting_with_an_error(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        for wire in (sse("error", json.loads(self.OVERLOADED)), b"data: " + self.OVERLOADED + b"\n\n"):
            upstream.script(Reply(steps=[wire]))
            r = await balancer.client.post("/v1/messages", json={**JSON_BODY, "stream": True})
            assert_error(r, 529, "overloaded_error")

    async def test_openai_error_in_a_200(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        body = json.dumps(
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
        )
        upstream.script(Reply(headers=JSON_HEADERS, steps=[body.encode()]))
        b = await balancer_for(config=ledger_config(tmp_path, upstream, "openai"))
        r = await b.client.post("/v1/messages", json=JSON_BODY)
        assert_error(r, 429, "rate_limit_error")


class TestOpenAIShapes:
    def test_kimi_usage_inside_the_choice(self) -> None:
        # Moonshot's stream: the last chunk carries usage inside choices[0] with the finish reason.
        chunks = [
            oai_chunk({"role": "assistant", "content": "你好"}),
            oai({"id": "c", "object": "chat.completion.chunk", "model": "kimi-k2", "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop",
                 "usage": {"prompt_tokens": 19, "completion_tokens": 13, "total_tokens": 32, "cached_tokens": 0}}]}),
            OAI_DONE,
        ]  # fmt: skip
        message = convert(chunks)
        assert message["usage"]["input_tokens"] == 19 and message["usage"]["output_tokens"] == 13

    def test_groq_usage_under_x_groq(self) -> None:
        chunks = [
            oai_chunk({"role": "assistant", "content": "hi"}),
            oai({"id": "c", "object": "chat.completion.chunk", "model": "llama", "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}],
                "x_groq": {"id": "req_01", "usage": {"queue_time": 0.02, "prompt_tokens": 40, "completion_tokens": 9,
                                                      "total_tokens": 49}}}),
            OAI_DONE,
        ]  # fmt: skip
        message = convert(chunks)
        assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (40, 9)

    def test_openai_refusal_reaches_the_client(self) -> None:
        chunks = [
            oai_chunk({"role": "assistant", "content": None, "refusal": ""}),
            oai_chunk({"refusal": "I can't help"}),
            oai_chunk({"refusal": " with that."}),
            oai_chunk({}, "stop"),
            OAI_DONE,
        ]
        message = convert(chunks)
        assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
        assert message["stop_reason"] == "refusal"
        whole = to_anthropic_message(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": "No."},
                          "finish_reason": "stop"}]}, model="m")  # fmt: skip
        assert whole["content"] == [{"type": "text", "text": "No."}] and whole["stop_reason"] == "refusal"

    def test_openrouter_error_beside_choices_ends_in_an_error(self) -> None:
        # OpenRouter, mid-stream: the provider failed; the chunk keeps choices with finish_reason "error".
        chunks = [
            oai_chunk({"role": "assistant", "content": "partial"}),
            oai({"id": "c", "object": "chat.completion.chunk", "model": "x", "provider": "SomeProvider",
                 "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
                 "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}),
        ]  # fmt: skip
        with pytest.raises(UpstreamStreamError) as caught:
            convert(chunks)
        assert caught.value.error_type == "api_error" and "disconnected" in str(caught.value)

    def test_groq_tool_use_failed_is_the_requests_fault(self) -> None:
        chunks = [oai({"error": {"message": "Failed to call a function.", "type": "invalid_request_error",
                                 "code": "tool_use_failed", "failed_generation": "<function=x>"}})]  # fmt: skip
        with pytest.raises(UpstreamStreamError) as caught:
            convert(chunks)
        assert caught.value.error_type == "invalid_request_error"

    def test_mistral_content_parts(self) -> None:
        # Magistral: delta.content is a list of typed parts; thinking parts hold text parts.
        chunks = [
            oai_chunk(
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Let me see."}]}],
                }
            ),
            oai_chunk({"content": [{"type": "text", "text": "The answer "}]}),
            oai_chunk({"content": [{"type": "text", "text": "is 4."}]}),
            oai_chunk({}, "stop"),
            OAI_DONE,
        ]
        message = convert(chunks)
        assert [b["type"] for b in message["content"]] == ["thinking", "text"]
        assert (
            message["content"][0]["thinking"] == "Let me see."
            and message["content"][1]["text"] == "The answer is 4."
        )
        whole = to_anthropic_message({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
                                             {"type": "text", "text": "4"}]}}]}, model="m")  # fmt: skip
        assert [b["type"] for b in whole["content"]] == ["thinking", "text"]

    def test_long_user_id_becomes_a_short_stable_digest(self) -> None:
        user_id = "user_" + "a" * 64 + "_account__session_" + "0123abcd-" * 8
        body = to_openai({**JSON_BODY, "metadata": {"user_id": user_id}}, model="gpt-x").body
        assert body["user"] == user_digest(user_id) and len(body["user"]) <= 64
        assert (
            to_openai({**JSON_BODY, "metadata": {"user_id": user_id}}, model="gpt-x").body["user"]
            == body["user"]
        )
        assert user_id not in json.dumps(body)

    def test_cache_control_is_listed_as_dropped(self) -> None:
        payload = {
            **JSON_BODY,
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        }
        assert "cache_control" in to_openai(payload, model="gpt-x").dropped
        assert "cache_control" not in to_openai(JSON_BODY, model="gpt-x").dropped
