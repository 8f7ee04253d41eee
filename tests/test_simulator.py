"""The upstream simulator, directly and behind the balancer, with each of its faults."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from typing import Any

import anthropic
import httpx
import pytest
import trio

from trio_balancer.tools.simulator import STAMP_DIGITS, SimOptions

from .helpers import Balancer, BalancerFactory, assert_error, env, read_until

MSG: list[Any] = [{"role": "user", "content": "hello"}]


def sdk(url: str, **headers: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="sk-sim", max_retries=0, default_headers=headers)


async def both(sim: str, balancer_for: BalancerFactory, **extra: Any) -> Balancer:
    return await balancer_for(config={
        **extra,
        "providers": [{"name": "anth", "kind": "anthropic", "base_url": sim, "api_key": "k"},
                      {"name": "oa", "kind": "openai", "base_url": sim + "/v1", "api_key": "k",
                       "headers": {"x-sim-events": "6", "x-sim-tools": "1"}}],
        "routes": [{"match": "gpt-*", "targets": [{"provider": "oa"}]}, {"match": "*", "targets": [{"provider": "anth"}]}],
    })  # fmt: skip


def test_headers_override_defaults() -> None:
    o = SimOptions().with_headers(
        {"x-sim-eps": "5", "x-sim-cjk": "1", "x-sim-cut-after": "3", "x-sim-retry-after": "2.5"}
    )
    assert (o.eps, o.cjk, o.cut_after, o.retry_after, o.events) == (5.0, True, 3, 2.5, 20)


async def test_sdk_directly(sim: str) -> None:
    async with (
        sdk(sim, **{"x-sim-tools": "2", "x-sim-eps": "0"}) as client,
        client.messages.stream(model="claude-x", max_tokens=50, messages=MSG) as s,
    ):
        final = await s.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"path": "notes/0.md", "limit": 20}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 20 * 4 + 24


async def test_both_kinds_through_the_balancer(sim: str, balancer_for: BalancerFactory) -> None:
    b = await both(sim, balancer_for)
    async with sdk(b.url, **{"x-sim-eps": "0", "x-sim-cjk": "1"}) as client:
        async with client.messages.stream(model="claude-x", max_tokens=50, messages=MSG) as s:
            anth = await s.get_final_message()
        async with client.messages.stream(model="gpt-x", max_tokens=50, messages=MSG) as s:
            oa = await s.get_final_message()
    assert anth.content[0].text.startswith("流式响应")  # type: ignore[union-attr]
    assert [b.type for b in oa.content] == ["text", "tool_use"] and oa.stop_reason == "tool_use"
    assert oa.usage.output_tokens == 6 * 4 + 12 and oa.usage.input_tokens > 0


async def test_error_status_with_retry_after(sim: str, balancer_for: BalancerFactory) -> None:
    b = await both(sim, balancer_for)
    r = await b.client.post(
        "/v1/messages",
        json={"model": "claude-x", "max_tokens": 5, "messages": MSG},
        headers={"x-sim-status": "529", "x-sim-retry-after": "7"},
    )
    assert_error(r, 529, "overloaded_error")
    assert r.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("header", "expect"),
    [
        ("x-sim-error-after", b"overloaded_error"),
        ("x-sim-cut-after", b"api_error"),
        ("x-sim-stall-after", b"timeout_error"),
    ],
)
async def test_faults_after_commit_end_in_one_error_event(
    sim: str, balancer_for: BalancerFactory, header: str, expect: bytes
) -> None:
    b = await balancer_for(
        config={
            "providers": [
                {"name": "s", "kind": "anthropic", "base_url": sim, "api_key": "k", "timeouts": {"idle": 0.5}}
            ]
        }
    )
    async with b.client.stream(
        "POST",
        "/v1/messages",
        json={"model": "m", "max_tokens": 5, "stream": True, "messages": MSG},
        headers={header: "3", "x-sim-eps": "50"},
    ) as r:
        body = await r.aread()
    assert body.count(b"event: content_block_delta") == 3
    assert body.count(b"event: error") == 1 and expect in body and b"message_stop" not in body


async def test_trickled_stream_arrives_whole(sim: str, balancer_for: BalancerFactory) -> None:
    b = await both(sim, balancer_for)
    async with (
        sdk(b.url, **{"x-sim-trickle": "1", "x-sim-events": "5", "x-sim-eps": "0"}) as client,
        client.messages.stream(model="claude-x", max_tokens=5, messages=MSG) as s,
    ):
        final = await s.get_final_message()
    text = final.content[0].text  # type: ignore[union-attr]
    assert len(text) == 16 * 5 and text.startswith("stream event bal")


async def test_no_usage_is_estimated_in_the_ledger(sim: str, balancer_for: BalancerFactory) -> None:
    b = await both(sim, balancer_for)
    await b.client.post(
        "/v1/messages",
        json={"model": "claude-opus-4-6", "max_tokens": 5, "stream": True, "messages": MSG},
        headers={"x-sim-no-usage": "1", "x-sim-eps": "0"},
    )
    (row,) = await b.ledger_rows(1)
    assert row["usage_source"] == "estimated" and row["output_tokens"] > 50


async def test_stamps_are_send_times(sim: str) -> None:
    before = time.time_ns()
    async with httpx.AsyncClient(trust_env=False) as client:
        r = await client.post(
            sim + "/v1/messages",
            json={"model": "m", "max_tokens": 5, "stream": True, "messages": MSG},
            headers={"x-sim-stamp": "1", "x-sim-eps": "100", "x-sim-events": "5"},
        )
    stamps = [int(m) for m in re.findall(rb'"text":"(\d{%d}) ' % STAMP_DIGITS, r.content)]
    assert len(stamps) == 5 and stamps == sorted(stamps)
    assert before <= stamps[0] <= stamps[-1] <= time.time_ns()
    assert stamps[-1] - stamps[0] >= 4 * 0.01 * 1e9 * 0.8  # paced at 100 events/s


async def test_cli(tmp_path: Any) -> None:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_balancer", "simulate", "--port", "0", "--events", "3", "--eps", "0"],
        stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        m, _ = await read_until(proc.stderr, rb"listening on (http://[\d.]+:\d+)")
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.post(
                m.group(1).decode() + "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": MSG}
            )
        text = r.json()["content"][0]["text"]
        assert r.status_code == 200 and len(text) == 3 * 16 and text.startswith("stream event bal")
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
