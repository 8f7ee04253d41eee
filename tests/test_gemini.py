"""Gemini's own API through the simulator's Gemini dialect, seen by the official SDK.

What each family must do (stream, JSON, tools, count, throttling, disconnect) is in
``test_clouds.TestEachCloud``; here is what only Gemini's conversion has: thinking carried by
Gemini's thought signatures across turns, several calls in one turn paired with their
results, history from another family, schemas cleaned to what Gemini takes, safety stops,
Google's errors and key refusals, and usage priced at Gemini's rates.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import anthropic
import pytest
import trio

from trio_balancer.protocol.gemini import GEMINI_SIGNATURE_PREFIX
from trio_balancer.tools import simulator
from trio_balancer.tools.sim_gemini import SIM_GEMINI_SIGNATURE

from .helpers import CLIENT_KEY, Balancer, BalancerFactory

KEY = "AIzaSy-sim-gemini-key-0000000000000000"
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 2048,
    "messages": [{"role": "user", "content": "what is in the notes?"}],
}
READ: dict[str, Any] = {
    "name": "read_file",
    "description": "Read a file",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "format": "uri-reference"},
            "limit": {"type": "integer", "exclusiveMinimum": 0},
        },
        "required": ["path"],
    },
}
THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture
async def sim(nursery: trio.Nursery) -> tuple[simulator.Simulator, str]:
    sim = simulator.Simulator(simulator.SimOptions(eps=0, events=3), gemini_keys=[KEY])
    port = await nursery.start(partial(simulator.serve, sim))
    return sim, f"http://127.0.0.1:{port}"


def gemini(url: str, name: str = "gemini", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "gemini", "base_url": url, "api_key": KEY, **extra}


def on_model(model: str, *rows: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A config sending every Claude model to ``model`` on the first row (the others as they are)."""
    targets = [{"provider": rows[0]["name"], "model": model}] + [{"provider": r["name"]} for r in rows[1:]]
    return {"providers": list(rows), "routes": [{"match": "*", "targets": targets}], **extra}


def sdk(b: Balancer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=b.url, api_key=CLIENT_KEY, max_retries=0)


async def streamed(b: Balancer, **extra: Any) -> anthropic.types.Message:
    async with sdk(b) as client, client.messages.stream(**{**BODY, **extra}) as s:
        return await s.get_final_message()


def history(message: anthropic.types.Message, results: dict[str, str]) -> list[dict[str, Any]]:
    """The next turn's messages: the question, the answer as the client keeps it, the results."""
    return [
        *BODY["messages"],
        {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use_id, "content": text}
                for use_id, text in results.items()
            ],
        },
    ]


async def test_thinking_and_two_calls_round_trip_with_gemini_3s_signatures(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    """Turn one thinks and makes two calls; turn two gives both results back. The simulator
    refuses a gemini-3 model turn whose first call lacks its thoughtSignature, and a count of
    responses that differs from the calls: the 200 of turn two says both came back right."""
    _, url = sim
    row = gemini(url, headers={"x-sim-tools": "2", "x-sim-tool-loop": "1"})
    b = await balancer_for(config=on_model("gemini-3-pro-preview", row))
    first = await streamed(b, tools=[READ], thinking=THINKING)
    # The thought, the text, then the signature Gemini put on the first call, kept in a thinking
    # block of its own just before the call (where the next turn gives it back).
    assert [c.type for c in first.content] == ["thinking", "text", "thinking", "tool_use", "tool_use"]
    thought, signed = first.content[0], first.content[2]
    assert thought.type == "thinking" and thought.thinking
    assert signed.type == "thinking" and signed.signature == GEMINI_SIGNATURE_PREFIX + SIM_GEMINI_SIGNATURE
    uses = [c for c in first.content if c.type == "tool_use"]
    assert [u.id for u in uses] == ["call_sim_0", "call_sim_1"]  # Gemini 3's own ids, kept
    assert first.stop_reason == "tool_use" and first.model == BODY["model"]
    second = await streamed(
        b,
        tools=[READ],
        thinking=THINKING,
        messages=history(first, {"call_sim_0": "alpha", "call_sim_1": "beta"}),
    )
    text = "".join(c.text for c in second.content if c.type == "text")
    assert "alpha" in text and "beta" in text and second.stop_reason == "end_turn"


async def test_calls_without_ids_get_stable_ids_that_pair_with_their_results(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    row = gemini(url, headers={"x-sim-tools": "2", "x-sim-tool-loop": "1"})
    b = await balancer_for(config=on_model("gemini-2.5-flash", row))
    first = await streamed(b, tools=[READ])
    ids = [c.id for c in first.content if c.type == "tool_use"]
    assert len(set(ids)) == 2 and all(ids)
    second = await streamed(b, tools=[READ], messages=history(first, dict.fromkeys(ids, "done")))
    assert second.stop_reason == "end_turn"


async def test_history_from_another_family_is_accepted_by_gemini_3(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    """A tool call Claude made (signed by Anthropic, no Gemini signature) in the history: its
    thinking is dropped and the call carries the documented skip value, so Gemini 3 takes it."""
    _, url = sim
    b = await balancer_for(config=on_model("gemini-3-flash-preview", gemini(url)))
    messages = [
        *BODY["messages"],
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "I should read it.",
                    "signature": "EqQBCkYIBxgCKkA" + "x" * 40,
                },
                {"type": "tool_use", "id": "toolu_01A", "name": "read_file", "input": {"path": "a.md"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "hi"}]},
    ]
    message = await streamed(b, tools=[READ], thinking=THINKING, messages=messages)
    assert message.stop_reason == "end_turn"


async def test_a_json_answer_with_calls(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    b = await balancer_for(config=on_model("gemini-3-pro-preview", gemini(url, headers={"x-sim-tools": "2"})))
    async with sdk(b) as client:
        message = await client.messages.create(**BODY, tools=[READ])
    # gemini-3 signs its first call: a thinking block carrying only that signature goes before it
    assert [c.type for c in message.content] == ["text", "thinking", "tool_use", "tool_use"]
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 12 + 24


async def test_a_safety_stop_is_a_refusal(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    b = await balancer_for(config={"providers": [gemini(url, headers={"x-sim-finish": "SAFETY"})]})
    message = await streamed(b)
    assert message.stop_reason == "refusal"


async def test_usage_is_geminis_and_priced_at_its_rates(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory, tmp_path: Any
) -> None:
    _, url = sim
    config = on_model("gemini-2.5-pro", gemini(url), ledger={"url": f"sqlite:///{tmp_path}/l.sqlite3"})
    b = await balancer_for(config=config)
    message = await streamed(b)
    async with sdk(b) as client:  # another body: the same one would be answered from the cache
        answer = await client.messages.create(**{**BODY, "max_tokens": 99})
    rows = await b.ledger_rows(2)
    assert sorted(r["input_tokens"] for r in rows) == sorted(
        [message.usage.input_tokens, answer.usage.input_tokens]
    )
    for row in rows:
        assert row["provider"] == "gemini" and row["usage_source"] not in ("partial", "estimated", "none"), (
            row
        )
        assert row["input_tokens"] > 0 and row["output_tokens"] == 12
        expected = (row["input_tokens"] * 1.25 + row["output_tokens"] * 10) / 1e6
        assert row["cost_usd"] == pytest.approx(expected), row


async def test_a_refused_key_fails_over_and_is_never_shown(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    wrong = "AIzaSy-not-the-key-11111111111111111111"
    rows = [gemini(url, "g1", api_key=wrong), gemini(url, "g2")]
    b = await balancer_for(config={"providers": rows})
    r = await b.client.post("/v1/messages", json=BODY)
    assert r.status_code == 200, r.text
    assert (await b.ledger_rows(1))[0]["provider"] == "g2"
    alone = await balancer_for(config={"providers": [gemini(url, "g1", api_key=wrong)]})
    r = await alone.client.post("/v1/messages", json=BODY)
    assert r.status_code in (401, 502) and wrong not in r.text, r.text


async def test_throttled_with_retry_after_is_a_rate_limit_error(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    headers = {"x-sim-status": "429", "x-sim-retry-after": "7"}
    b = await balancer_for(config={"providers": [gemini(url, headers=headers)]})
    r = await b.client.post("/v1/messages", json=BODY)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error", r.text
    assert "RESOURCE_EXHAUSTED" in r.json()["error"]["message"]


async def test_an_error_in_the_stream_before_content_fails_over(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    rows = [gemini(url, "g1", headers={"x-sim-error-after": "0"}), gemini(url, "g2")]
    b = await balancer_for(config={"providers": rows})
    message = await streamed(b)
    assert message.stop_reason == "end_turn"
    assert (await b.ledger_rows(1))[0]["provider"] == "g2"


async def test_a_stream_cut_after_content_ends_with_an_error_event(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    b = await balancer_for(config={"providers": [gemini(url, headers={"x-sim-cut-after": "2"})]})
    async with b.client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as r:
        text = (await r.aread()).decode()
    assert "text_delta" in text and text.rstrip().splitlines()[-2] == "event: error", text[-400:]
    assert "message_stop" not in text


async def test_a_stalled_stream_hits_the_idle_timeout_and_fails_over(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    stalled = gemini(url, "g1", headers={"x-sim-stall-after": "0"}, timeouts={"idle": 0.3})
    b = await balancer_for(config={"providers": [stalled, gemini(url, "g2")]})
    message = await streamed(b)
    assert message.stop_reason == "end_turn"
    assert (await b.ledger_rows(1))[0]["provider"] == "g2"


async def test_count_tokens_counts_the_system_and_tools_too(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    _, url = sim
    b = await balancer_for(config={"providers": [gemini(url)]})
    body = {k: v for k, v in BODY.items() if k != "max_tokens"}
    bare = await b.client.post("/v1/messages/count_tokens", json=body)
    more = await b.client.post(
        "/v1/messages/count_tokens", json={**body, "system": "You are terse. " * 40, "tools": [READ]}
    )
    assert bare.status_code == more.status_code == 200
    assert more.json()["input_tokens"] > bare.json()["input_tokens"] > 0


async def test_passthrough_sends_the_clients_key(
    sim: tuple[simulator.Simulator, str], balancer_for: BalancerFactory
) -> None:
    simulated, url = sim
    simulated.gemini_keys = frozenset({CLIENT_KEY})
    b = await balancer_for(config={"providers": [gemini(url, api_key="passthrough")]})
    r = await b.client.post("/v1/messages", json=BODY, headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["content"][0]["type"] == "text"
    r = await b.client.post("/v1/messages", json={**BODY, "max_tokens": 7})  # no key: Google's 403
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
