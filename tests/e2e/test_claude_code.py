"""The real Claude Code CLI through the balancer, against scripted Anthropic and OpenAI upstreams.

The CLI is installed from the npm registry into ``.cache/claude-code`` in the checkout (kept
between runs) and run headless: ``claude -p PROMPT --max-turns N`` with a throwaway HOME. These
tests are skipped, with the reason in the summary, only when npm or its registry is unreachable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_balancer.tools.claude_code import environment

from ..fakes import (
    SSE_HEADERS,
    FakeUpstream,
    Received,
    Reply,
    anthropic_text_events,
    error_reply,
    interleave,
    oai_chunk,
    old_anthropic_rejection,
    openai_text_stream,
    sse,
)
from ..helpers import CLIENT_KEY, PROVIDER_KEY, BalancerFactory
from ..signing_fakes import Answer, ReasoningProvider, SigningProvider, Step, thinking_on
from .capture import CACHE, SECRET


async def run_claude(
    binary: Path,
    url: str,
    workdir: Path,
    prompt: str,
    *args: str,
    home: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> str:
    env = environment(url, api_key=CLIENT_KEY)
    env.update(
        extra_env or {},
        HOME=str(home or workdir.parent / "home"),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
    )
    env.pop("ANTHROPIC_AUTH_TOKEN", None)
    with trio.fail_after(120):
        result = await trio.run_process(
            [str(binary), "-p", prompt, *args], cwd=workdir, env=env,
            capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    out = result.stdout.decode()
    assert result.returncode == 0, (
        f"claude exited {result.returncode}: {out}\n{result.stderr.decode()[-2000:]}"
    )
    return out.strip()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(f"The launch code is {SECRET}.\n")
    return work


def assert_claude_code_request(req: Received, *, anthropic: bool = True) -> None:
    """What reached the provider is Claude Code's request, with our key and never the client's."""
    assert CLIENT_KEY not in json.dumps(req.headers) and CLIENT_KEY not in req.body.decode(errors="replace")
    if anthropic:
        assert req.header("x-api-key") == PROVIDER_KEY
        assert "claude-code-20250219" in (req.header("anthropic-beta") or "")
        assert req.header("x-app") == "cli"
        assert (req.header("user-agent") or "").startswith("claude-cli/")
        assert req.target.startswith("/v1/messages")
    else:
        assert req.header("authorization") == f"Bearer {PROVIDER_KEY}"
        assert req.target == "/v1/chat/completions"


def tool_use_events(name: str, tool_input: dict[str, Any]) -> list[bytes]:
    raw = json.dumps(tool_input)
    return [
        sse("message_start", {"type": "message_start", "message": {"id": "msg_tool", "type": "message", "role": "assistant", "model": "claude-opus-4-6",
                                                                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 900, "output_tokens": 1}}}),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me read it."}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_e2e_1", "name": name, "input": {}}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": raw[:12]}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": raw[12:]}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 30}}),
        sse("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


def tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


def found_secret(text: str) -> str:
    m = re.search(r"[A-Z]+-[A-Z]+-\d{4}", text)
    return m.group(0) if m else "NOTHING"


def anthropic_tool_script(workdir: Path) -> Any:
    def script(r: Received) -> Reply:
        body = r.json()
        last = body["messages"][-1]
        results = (
            [b for b in last["content"] if b.get("type") == "tool_result"]
            if isinstance(last["content"], list)
            else []
        )
        if not results:
            assert "Read" in [t["name"] for t in body.get("tools", [])]
            return Reply(steps=tool_use_events("Read", {"file_path": str(workdir / "notes.txt")}))
        quoted = found_secret(tool_result_text(results[0]["content"]))
        return Reply(steps=anthropic_text_events([f"The file says the code is {quoted}."]))

    return script


def openai_tool_script(workdir: Path) -> Any:
    def script(r: Received) -> Reply:
        body = r.json()
        tool_messages = [m for m in body["messages"] if m["role"] == "tool"]
        if not tool_messages:
            assert "Read" in [t["function"]["name"] for t in body.get("tools", [])]
            args = json.dumps({"file_path": str(workdir / "notes.txt")})
            return Reply(headers=SSE_HEADERS, steps=[
                oai_chunk({"role": "assistant", "content": "Reading."}),
                oai_chunk({"tool_calls": [{"index": 0, "id": "call_e2e_1", "type": "function", "function": {"name": "Read", "arguments": args[:9]}}]}),
                oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[9:]}}]}),
                oai_chunk({}, "tool_calls"),
                oai_chunk(usage={"prompt_tokens": 900, "completion_tokens": 25, "total_tokens": 925}),
                b"data: [DONE]\n\n",
            ])  # fmt: skip
        quoted = found_secret(tool_result_text(tool_messages[-1]["content"]))
        return Reply(headers=SSE_HEADERS, steps=openai_text_stream([f"The file says the code is {quoted}."]))

    return script


def config(*pairs: tuple[str, FakeUpstream], **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "providers": [
            {
                "name": f"p{i}",
                "kind": kind,
                "base_url": up.url + ("/v1" if kind == "openai" else ""),
                "api_key": PROVIDER_KEY,
            }
            for i, (kind, up) in enumerate(pairs)
        ],
    }


class TestClaudeCode:
    async def test_plain_answer_via_anthropic_provider(
        self, claude_bin: Path, workdir: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["Hello ", "from ", "the ", "balancer."])))
        b = await balancer_for(config=config(("anthropic", upstream)))
        out = await run_claude(claude_bin, b.url, workdir, "say hello", "--max-turns", "1")
        assert out == "Hello from the balancer."
        assert_claude_code_request(upstream.received[0])

    async def test_plain_answer_via_openai_provider(
        self, claude_bin: Path, workdir: Path, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        upstream.script(
            Reply(headers=SSE_HEADERS, steps=openai_text_stream(["Converted ", "on ", "the ", "fly."]))
        )
        b = await balancer_for(config=config(("openai", upstream)))
        out = await run_claude(claude_bin, b.url, workdir, "say hello", "--max-turns", "1")
        assert out == "Converted on the fly."
        req = upstream.received[0]
        assert_claude_code_request(req, anthropic=False)
        assert req.json()["stream_options"] == {"include_usage": True}

    @pytest.mark.parametrize("kind", ["anthropic", "openai"])
    async def test_tool_round_trip(
        self,
        claude_bin: Path,
        workdir: Path,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        kind: str,
    ) -> None:
        upstream.script(
            anthropic_tool_script(workdir) if kind == "anthropic" else openai_tool_script(workdir)
        )
        b = await balancer_for(config=config((kind, upstream)))
        out = await run_claude(
            claude_bin,
            b.url,
            workdir,
            "What is the launch code in notes.txt?",
            "--max-turns",
            "3",
            "--allowedTools",
            "Read",
        )
        assert out == f"The file says the code is {SECRET}."
        assert len(upstream.received) == 2  # the tool call, then the answer after Claude Code ran it
        for req in upstream.received:
            assert_claude_code_request(req, anthropic=kind == "anthropic")
        second = upstream.received[1].json()
        if kind == "anthropic":
            results = [blk for blk in second["messages"][-1]["content"] if blk.get("type") == "tool_result"]
            assert results[0]["tool_use_id"] == "toolu_e2e_1" and SECRET in tool_result_text(
                results[0]["content"]
            )
        else:
            tool_msg = next(m for m in second["messages"] if m["role"] == "tool")
            assert tool_msg["tool_call_id"] == "call_e2e_1" and SECRET in tool_msg["content"]

    async def test_failover_claude_code_never_notices(
        self, claude_bin: Path, workdir: Path, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        overloaded = await FakeUpstream(error_reply(529, "overloaded_error", "Overloaded")).start(nursery)
        good = await FakeUpstream(
            Reply(steps=anthropic_text_events(["Served ", "by ", "the ", "backup."]))
        ).start(nursery)
        b = await balancer_for(config=config(("anthropic", overloaded), ("anthropic", good)))
        out = await run_claude(claude_bin, b.url, workdir, "say hello", "--max-turns", "1")
        assert out == "Served by the backup."
        # Claude Code retries 529s itself; one request at the overloaded provider means it never saw one.
        assert len(overloaded.received) == 1 and len(good.received) == 1
        assert_claude_code_request(good.received[0])

    async def test_two_runs_same_prompt_cost_one_upstream_stream(
        self,
        claude_bin: Path,
        workdir: Path,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        tmp_path: Path,
    ) -> None:
        """Same prompt, same directory, same HOME: the requests differ only in metadata (session
        and device ids), which the dedup signature leaves out. (Different directories or HOMEs
        do not share: Claude Code's system prompt names the working directory and memory path.)"""
        upstream.script(Reply(steps=interleave(anthropic_text_events([f"part{i} " for i in range(20)]), 0.1)))
        b = await balancer_for(config=config(("anthropic", upstream)))
        home = tmp_path / "shared-home"
        outs: list[str] = []

        async def one() -> None:
            outs.append(
                await run_claude(claude_bin, b.url, workdir, "tell me a story", "--max-turns", "1", home=home)
            )

        async with trio.open_nursery() as n:
            n.start_soon(one)
            await upstream.wait_received(1, limit=60)  # the first run's request is being answered
            n.start_soon(one)
        expected = "".join(f"part{i} " for i in range(20)).strip()
        assert outs == [expected, expected]
        assert len(upstream.received) == 1
        await b.wait_idle()
        assert b.app.ledger is not None
        with trio.fail_after(5):
            await b.app.ledger.wait_written(2)
        roles = sorted(r["dedup_role"] for r in (await b.client.get("/usage/requests")).json()["records"])
        assert roles in (["follower", "leader"], ["cache", "leader"])


def ends_with_tool_result(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    content = last.get("content")
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def by_content(provider: SigningProvider | ReasoningProvider, decide: Any) -> Any:
    """A signing or reasoning fake answering each request by what it asks, not by its order
    (a Claude Code run may send background requests besides the conversation)."""

    def handler(r: Received) -> Reply:
        body = r.json()
        provider.script[:] = [decide(body)]
        return provider(r)

    return handler


def oai_ends_with_tool_result(body: dict[str, Any]) -> bool:
    return bool(body["messages"][-1].get("role") == "tool")


class TestConversationAcrossFamilies:
    """The current CLI with thinking on and a tool loop, moved by failover to another family.

    Turn one: provider A (Anthropic's family, signs its thinking) thinks and asks to Read a file.
    Turn two (the tool result): A is overloaded, so the balancer moves the conversation to B,
    which cannot verify A's signature (another Anthropic-compatible family, strict about what an
    older server takes) or is a DeepSeek-style reasoning model (which wants the prior thinking
    back as ``reasoning_content`` on the tool-call turn). A second run continues the same
    conversation (``--continue``) and goes back to A, which gets its own signed block back and
    none it cannot verify. Claude Code sees one coherent conversation throughout.
    """

    @pytest.mark.parametrize("second", ["anthropic-compatible", "deepseek"])
    async def test_thinking_tool_loop_moves_to_another_family_and_back(
        self,
        claude_bin: Path,
        workdir: Path,
        nursery: trio.Nursery,
        balancer_for: BalancerFactory,
        second: str,
    ) -> None:
        notes = str(workdir / "notes.txt")
        a = SigningProvider("anthropic", [])

        def a_decides(body: dict[str, Any]) -> Step:
            if ends_with_tool_result(body):
                return error_reply(529, "overloaded_error", "Overloaded")
            if any(m["role"] == "assistant" for m in body["messages"]):  # the continued conversation
                return Answer(thinking="a again", text=f"Still {found_secret(json.dumps(body))}.")
            return Answer(
                thinking="I should read the file.",
                text="Reading.",
                tool=("toolu_fam_1", "Read", {"file_path": notes}),
            )

        def b_decides(body: dict[str, Any]) -> Step:
            if ends_with_tool_result(body) or oai_ends_with_tool_result(body):
                return Answer(
                    thinking="b reads the result",
                    text=f"The file says the code is {found_secret(json.dumps(body))}.",
                )
            return error_reply(529, "overloaded_error", "Overloaded")

        a_up = await FakeUpstream(by_content(a, a_decides)).start(nursery)
        if second == "deepseek":
            b: SigningProvider | ReasoningProvider = ReasoningProvider([])
            b_up = await FakeUpstream(by_content(b, b_decides)).start(nursery)
            row = {"name": "deepseek", "kind": "openai", "preset": "deepseek", "base_url": b_up.url + "/v1"}
        else:
            b = SigningProvider("glm", [])
            signing = by_content(b, b_decides)

            def strict(r: Received) -> Reply:
                why = old_anthropic_rejection(r)
                return signing(r) if why is None else error_reply(400, "invalid_request_error", why)

            b_up = await FakeUpstream(strict).start(nursery)
            row = {"name": "glm", "kind": "anthropic", "preset": "anthropic-compatible", "base_url": b_up.url}
        providers = [{"name": "a", "kind": "anthropic", "base_url": a_up.url}, row]
        bal = await balancer_for(config={"providers": [{**p, "api_key": PROVIDER_KEY} for p in providers]})
        thinking_env = {"MAX_THINKING_TOKENS": "4096"}

        out = await run_claude(
            claude_bin, bal.url, workdir, "What is the launch code in notes.txt?",
            "--max-turns", "3", "--allowedTools", "Read", extra_env=thinking_env,
        )  # fmt: skip
        assert out == f"The file says the code is {SECRET}."
        assert thinking_on(a.bodies[0]), "the CLI asked for thinking"
        again = await run_claude(
            claude_bin, bal.url, workdir, "And the code again?", "--continue",
            "--max-turns", "1", extra_env=thinking_env,
        )  # fmt: skip
        assert again == f"Still {SECRET}."
        final = a.bodies[-1]
        signatures = [
            blk.get("signature")
            for m in final["messages"]
            for blk in (m["content"] if isinstance(m["content"], list) else [])
            if blk.get("type") == "thinking"
        ]
        assert signatures and all(s in a.signed for s in signatures), "A got back only what it signed"
        records = await bal.ledger_rows(3)
        served = [r["provider"] for r in sorted(records, key=lambda r: r["started_at"]) if r["status"] == 200]
        assert served[-3:] == ["a", row["name"], "a"]


def test_claude_command_needs_a_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_balancer.cli import main
    from trio_balancer.tools import claude_code

    monkeypatch.setattr(claude_code, "DEFAULT_CACHE", tmp_path / "empty")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["claude", "--url", "http://127.0.0.1:1", "--", "-p", "hi"]) == 127
    assert "--install" in capsys.readouterr().err


def test_claude_command_execs_with_the_balancer_url(claude_bin: Path, tmp_path: Path) -> None:
    """`trio-balancer claude -- --version` replaces itself with Claude Code, pointed at us."""
    import sys

    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(CACHE.parent.parent / "xdg-unused")}
    env["PATH"] = str(claude_bin.parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "trio_balancer", "claude", "--url", "http://127.0.0.1:9999", "--", "--version"],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"Claude Code" in result.stdout


class TestToolLoopBackToAnthropic:
    async def test_a_tool_call_from_another_model_is_answered_on_anthropic(
        self, claude_bin: Path, workdir: Path, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        """Turn one (the tool call) is served by another family under its own model name, so
        Claude Code drops that message's thinking from its history; turn two (the tool result)
        reaches Anthropic's family with thinking on and an open loop with no leading thinking."""
        notes = str(workdir / "notes.txt")
        a = SigningProvider("anthropic", [])
        glm = SigningProvider("glm", [], model="glm-4.6")

        def a_decides(body: dict[str, Any]) -> Step:
            if ends_with_tool_result(body):
                return Answer(
                    thinking="a reads", text=f"The file says the code is {found_secret(json.dumps(body))}."
                )
            return error_reply(529, "overloaded_error", "Overloaded")

        def glm_decides(body: dict[str, Any]) -> Step:
            if ends_with_tool_result(body):
                return error_reply(529, "overloaded_error", "Overloaded")
            return Answer(
                thinking="glm plans", text="Reading.", tool=("toolu_glm_1", "Read", {"file_path": notes})
            )

        a_up = await FakeUpstream(by_content(a, a_decides)).start(nursery)
        g_up = await FakeUpstream(by_content(glm, glm_decides)).start(nursery)
        providers = [
            {"name": "a", "kind": "anthropic", "base_url": a_up.url},
            {"name": "glm", "kind": "anthropic", "preset": "anthropic-compatible", "base_url": g_up.url},
        ]
        bal = await balancer_for(config={"providers": [{**p, "api_key": PROVIDER_KEY} for p in providers]})
        out = await run_claude(
            claude_bin, bal.url, workdir, "What is the launch code in notes.txt?",
            "--max-turns", "3", "--allowedTools", "Read",
        )  # fmt: skip
        assert out == f"The file says the code is {SECRET}."
        tool_turn = a.bodies[-1]
        assert ends_with_tool_result(tool_turn) and thinking_on(glm.bodies[0])
        loop = [m for m in tool_turn["messages"] if m["role"] == "assistant"][-1]
        assert all(b["type"] != "thinking" for b in loop["content"]), "Claude Code left glm's thinking out"
        # Adaptive thinking (what the CLI asks for) has no rule that the loop start with a
        # thinking block, so A takes it as sent; with thinking "enabled" the balancer sends it
        # without thinking (tests/test_thinking.py).
        assert tool_turn["thinking"]["type"] == "adaptive"
