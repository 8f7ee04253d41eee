"""Edges of task-aware routing, found by attacking it: what may share an answer, windows, names.

Requests that route differently never share a flight or a cached answer; the long-context beta
does not make haiku look like a 1M model; show_upstream_model holds for converted answers too;
renaming a JSON answer's model is bounded work; `when` tables no request can satisfy are refused
at load; `trio-balancer route` shows the window skips the server makes and refuses bad files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pytest

from trio_balancer.config import ConfigError, parse_config
from trio_balancer.policy.conditions import check_when
from trio_balancer.protocol import model_name
from trio_balancer.protocol.model_name import message_with_model
from trio_balancer.protocol.request_facts import facts_of
from trio_balancer.protocol.windows import OUTPUT_RESERVE, known_window, window_need

from .fakes import (
    JSON_HEADERS,
    FakeUpstream,
    Reply,
    anthropic_message,
    error_reply,
    oai,
)
from .helpers import NO_DEDUP, PROVIDER_KEY, BalancerFactory, message_body


def provider(name: str, url: str, kind: str = "anthropic") -> dict[str, Any]:
    return {"name": name, "kind": kind, "base_url": url, "api_key": PROVIDER_KEY}


def json_reply(text: str, model: str = "claude-sonnet-4-6") -> Reply:
    return Reply(
        headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message(text, model=model)).encode()]
    )


# -- dedup and the response cache ignore what a `when` condition reads ------------------------


@pytest.mark.parametrize(
    ("when", "header"),
    [
        ({"header": {"x-team": "red"}}, ("x-team", "red")),
        ({"subagent": True}, ("x-claude-code-agent-id", "agent-7f3a")),
    ],
    ids=["header-condition", "subagent-header"],
)
async def test_requests_routed_differently_never_share_a_cached_answer(
    nursery: Any, balancer_for: BalancerFactory, when: dict[str, Any], header: tuple[str, str]
) -> None:
    """Two requests with the same body, one carrying a header that a route's ``when`` reads:
    they take different routes (different providers), so the second must not get the first's
    answer from the cache. The dedup signature signs only anthropic-version/-beta headers."""
    red = await FakeUpstream(json_reply("from red")).start(nursery)
    blue = await FakeUpstream(json_reply("from blue")).start(nursery)
    config = {
        "providers": [provider("red", red.url), provider("blue", blue.url)],
        "routes": [
            {"name": "red", "match": "*", "when": when, "targets": [{"provider": "red"}]},
            {"name": "blue", "match": "*", "targets": [{"provider": "blue"}]},
        ],
    }
    b = await balancer_for(config=config)
    body = message_body()
    first = await b.client.post("/v1/messages", json=body, headers=dict([header]))
    assert first.status_code == 200 and first.headers["x-balancer-route"] == "red"
    assert "from red" in first.text
    second = await b.client.post("/v1/messages", json=body)
    assert second.status_code == 200
    assert second.headers["x-balancer-route"] == "blue"
    # The route header says blue, but the answer is red's cached one, and blue never saw it.
    assert "from blue" in second.text, (second.headers.get("x-balancer-dedup"), second.text)
    assert len(blue.received) == 1


# -- the long-context beta makes every Claude model 1M, which then blocks the real 1M target ----


async def test_long_context_beta_does_not_drop_the_target_that_holds_the_prompt(
    nursery: Any, balancer_for: BalancerFactory
) -> None:
    """Claude Code sends ``context-1m-2025-08-07`` for a ``[1m]`` model. The table then calls a
    cheap haiku target 1M too (it is 200K). When haiku answers "prompt is too long", the
    fallback keeps only targets with a window *larger* than haiku's (wrong) 1M, so the sonnet
    target that really holds 1M is dropped and the client gets haiku's 400."""
    cheap = await FakeUpstream(
        error_reply(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum")
    ).start(nursery)
    main = await FakeUpstream(json_reply("from main")).start(nursery)
    config = {
        "providers": [provider("cheap", cheap.url), provider("main", main.url)],
        "routes": [{"match": "claude-*", "targets": [
            {"provider": "cheap", "model": "claude-haiku-4-5"},
            {"provider": "main", "model": "claude-sonnet-4-5"},
        ]}],
    }  # fmt: skip
    b = await balancer_for(config=config)
    r = await b.client.post(
        "/v1/messages",
        json=message_body(model="claude-sonnet-4-5"),
        headers={"anthropic-beta": "context-1m-2025-08-07", **NO_DEDUP},
    )
    assert len(cheap.received) == 1
    assert r.status_code == 200, r.text
    assert len(main.received) == 1


# -- show_upstream_model does nothing for converted (OpenAI-kind) answers -----------------------


def showing_upstream_models(up: FakeUpstream) -> dict[str, Any]:
    """An OpenAI-kind target renaming claude-* to gpt-4o, with show_upstream_model on."""
    return {
        "providers": [provider("oa", up.url, kind="openai")],
        "routes": [{"match": "claude-*", "targets": [{"provider": "oa", "model": "gpt-4o"}]}],
        "routing": {"show_upstream_model": True},
        "dedup": {"enabled": False},
    }


async def test_show_upstream_model_shows_an_openai_targets_model(
    nursery: Any, balancer_for: BalancerFactory
) -> None:
    """``[routing] show_upstream_model = true``: "the client always sees the model name it asked
    for ... unless the operator sets show_upstream_model". For an OpenAI-kind target the
    converted answer was always written with the client's model (found by an attack)."""
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    up = await FakeUpstream(Reply(headers=list(JSON_HEADERS), steps=[json.dumps(completion).encode()])).start(
        nursery
    )
    b = await balancer_for(config=showing_upstream_models(up))
    async with anthropic.AsyncAnthropic(base_url=b.url, api_key="x", max_retries=0) as client:
        message = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert up.received[0].json()["model"] == "gpt-4o"
    assert message.model == "gpt-4o", message.model


async def test_show_upstream_model_shows_an_openai_streams_model(
    nursery: Any, balancer_for: BalancerFactory
) -> None:
    """The same for a converted stream's message_start."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06"}
    events = [
        oai({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]}),
        oai({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        b"data: [DONE]\n\n",
    ]  # fmt: skip
    up = await FakeUpstream(Reply(steps=events)).start(nursery)
    b = await balancer_for(config=showing_upstream_models(up))
    async with (
        anthropic.AsyncAnthropic(base_url=b.url, api_key="x", max_retries=0) as client,
        client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.model == "gpt-4o", final.model


# -- the model-name splice is quadratic in the answer ------------------------------------------


def test_renaming_a_json_answer_is_not_quadratic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON answer whose tool input mentions the upstream model many times, with the message's
    own ``model`` key after the content (key order is the provider's): each earlier match is
    spliced and the whole body parsed again, so the event loop spends seconds on one answer."""
    upstream = "deepseek-reasoner"
    rows = [{"model": upstream, "n": i} for i in range(4000)]
    doc = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "t", "name": "write", "input": {"rows": rows, "pad": "x" * 200_000}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
        "model": upstream,
    }
    body = json.dumps(doc).encode()
    parses = 0
    real_loads = model_name.json.loads

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal parses
        parses += 1
        return real_loads(*args, **kwargs)

    monkeypatch.setattr(model_name.json, "loads", counting)
    out = message_with_model(body, "claude-sonnet-4-6")
    monkeypatch.undo()
    assert json.loads(out)["model"] == "claude-sonnet-4-6"
    assert parses <= 20, f"{parses} parses of one {len(body)} byte answer"


# -- config: conditions that can never hold are accepted ---------------------------------------


def _one_route(when: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": [provider("a", "http://127.0.0.1:1")],
        "routes": [{"match": "*", "when": when, "targets": [{"provider": "a"}]}],
    }


@pytest.mark.parametrize(
    "when",
    [
        {"min_input_tokens": 100_000, "max_input_tokens": 1_000},
        {"header": {"x team": "a"}},
        {"header": {"x-team\n": "a"}},
        {"header": {"": "a"}},
    ],
    ids=["min-above-max", "header-name-space", "header-name-newline", "header-name-empty"],
)
def test_a_when_no_request_can_satisfy_is_refused(when: dict[str, Any]) -> None:
    """A route whose conditions cannot hold for any request is silently dead: every request
    falls through to a later route (or gets a 404). The config should say so at load time."""
    with pytest.raises(ConfigError):
        parse_config(_one_route(when))


def test_a_non_ascii_header_glob_matches_the_header_the_client_sent() -> None:
    """``header = { x-team = "café" }`` loads, but the request header's bytes are decoded as
    latin-1, so the UTF-8 ``café`` a client sends reads ``cafÃ©`` and never matches. Either
    refuse such a glob in the config or match it."""
    try:
        config = parse_config(_one_route({"header": {"x-team": "café"}}))
    except ConfigError:
        return
    when = config.routes[0].when
    facts = facts_of(message_body(), [(b"x-team", "café".encode())], body_bytes=100)
    assert check_when(when, facts).holds, check_when(when, facts).failed


# -- `trio-balancer route`: the plan it prints is not the plan the server makes ----------------


CLI_CONFIG = """
[[providers]]
name = "small"
kind = "anthropic"
base_url = "http://127.0.0.1:1"
api_key = "sk-test-provider-key-0123456789"

[[providers]]
name = "big"
kind = "anthropic"
base_url = "http://127.0.0.1:2"
api_key = "sk-test-provider-key-0123456789"

[[routes]]
match = "claude-*"
targets = [
  { provider = "small", model = "small-128k", context_window = 128000 },
  { provider = "big", model = "big-1m", context_window = 1000000 },
]
"""


def _route_cli(tmp_path: Path, capsys: Any, saved: str | bytes) -> tuple[int, str]:
    from trio_balancer.cli import main

    (tmp_path / "c.toml").write_text(CLI_CONFIG)
    path = tmp_path / "r.json"
    if isinstance(saved, bytes):
        path.write_bytes(saved)
    else:
        path.write_text(saved)
    code = main(["route", "--config", str(tmp_path / "c.toml"), str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_route_command_shows_the_context_window_skip(tmp_path: Path, capsys: Any) -> None:
    """A ~200k-token request: the server skips the 128k target (context window), the
    ``route`` command prints it as attempt 1 of the failover plan."""
    body = message_body(model="claude-sonnet-4-6", content="ab. " * 150_000)
    code, out = _route_cli(tmp_path, capsys, json.dumps(body))
    assert code == 0, out
    assert "  1. big: big-1m" in out, out
    assert "skipped small" in out, out


@pytest.mark.parametrize(
    "saved",
    [
        json.dumps({"model": "claude-x", "max_tokens": 1, "messages": [], "tools": 5}),
        json.dumps({"model": "claude-x", "max_tokens": 1, "messages": 7}),
        json.dumps({"headers": ["x-app", "cli"], "body": {"model": "claude-x", "messages": []}}),
        "[" * 200_000 + "]" * 200_000,
    ],
    ids=["tools-not-a-list", "messages-not-a-list", "headers-a-list", "deep-nesting"],
)
def test_route_command_on_a_garbage_file_says_so(tmp_path: Path, capsys: Any, saved: str) -> None:
    """A malformed saved request gets ``cannot read ...`` (exit 2, or a refusal), never a
    Python traceback out of the command."""
    try:
        code, out = _route_cli(tmp_path, capsys, saved)
    except Exception as exc:
        pytest.fail(f"trio-balancer route crashed: {type(exc).__name__}: {str(exc)[:200]}")
    assert code in (1, 2), out


def test_the_window_counts_claude_codes_output_budget_up_to_a_reserve() -> None:
    """Claude Code asks for 128,000 output tokens: counted whole, a 128k target was skipped for
    every turn (found by the e2e test), so only OUTPUT_RESERVE of it is counted."""
    body = message_body(max_tokens=128_000)
    assert window_need(body) == window_need(message_body(max_tokens=OUTPUT_RESERVE))
    assert window_need(message_body(max_tokens=100)) < window_need(body)
    assert known_window("claude-haiku-4-5", long_context=True) == 200_000
    assert known_window("claude-sonnet-4-5", long_context=True) == 1_000_000
