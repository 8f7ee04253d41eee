"""The real Claude Code CLI behind a target that renames the model (``model = "..."``).

Claude Code keeps an assistant message's thinking for the next request only when the message
names the model it asked for: a provider that answers under its own name would lose the
conversation's thinking at every tool call. The balancer puts the client's model name back
(``protocol/model_name.py``) unless ``[routing] show_upstream_model`` is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from ..fakes import FakeUpstream, Received, Reply
from ..helpers import PROVIDER_KEY, BalancerFactory
from ..signing_fakes import Answer, SigningProvider, Step
from .capture import SECRET, cli_command, cli_env, run_cli

UPSTREAM_MODEL = "deep-think-1"


def _ends_with_tool_result(body: dict[str, Any]) -> bool:
    content = body["messages"][-1].get("content")
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def _thinking_sent_back(body: dict[str, Any]) -> list[str]:
    """The signatures of the thinking blocks in a request's assistant messages."""
    return [
        block.get("signature", "")
        for m in body["messages"]
        if m["role"] == "assistant" and isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "thinking"
    ]


@pytest.mark.parametrize("show_upstream_model", [False, True])
async def test_thinking_survives_a_renamed_model(
    claude_bin: Path,
    tmp_path: Path,
    nursery: trio.Nursery,
    balancer_for: BalancerFactory,
    show_upstream_model: bool,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(f"The launch code is {SECRET}.\n")
    provider = SigningProvider("deep", [])  # answers under the model it was sent: the renamed one

    def decide(body: dict[str, Any]) -> Step:
        if _ends_with_tool_result(body):
            return Answer(
                thinking="Now I know.",
                text=f"The file says the code is {SECRET if SECRET in json.dumps(body) else '?'}.",
            )
        if not any(t.get("name") == "Read" for t in body.get("tools") or []):
            return Answer(text="ok")  # a background call
        return Answer(
            thinking="I should read it.",
            text="Reading.",
            tool=("toolu_m_1", "Read", {"file_path": str(work / "notes.txt")}),
        )

    def by_content(r: Received) -> Reply:  # background calls come in any order
        provider.script[:] = [decide(r.json())]
        return provider(r)

    up = await FakeUpstream(by_content).start(nursery)
    config = {
        "providers": [{"name": "deep", "kind": "anthropic", "base_url": up.url, "api_key": PROVIDER_KEY}],
        "routes": [{"match": "*", "targets": [{"provider": "deep", "model": UPSTREAM_MODEL}]}],
        "routing": {"show_upstream_model": show_upstream_model},
    }
    b = await balancer_for(config=config)
    home = tmp_path / "home"  # the balancer's conftest made it (its ledger lives there)
    args = ("-p", "What is the launch code in notes.txt?", "--max-turns", "3", "--allowedTools", "Read")
    env = cli_env(b.url, home, {"MAX_THINKING_TOKENS": "4096"})
    out = await run_cli(cli_command(claude_bin), args, work, env, 120)
    assert out == f"The file says the code is {SECRET}."
    assert all(body["model"] == UPSTREAM_MODEL for body in provider.bodies)
    after_tool = [body for body in provider.bodies if _ends_with_tool_result(body)]
    assert after_tool, "the CLI sent the tool result"
    sent_back = _thinking_sent_back(after_tool[-1])
    if not show_upstream_model:  # (whether Claude Code keeps thinking under the provider's own
        # name depends on that name: "glm-4.6" loses it, this one not; nothing to pin here)
        assert sent_back and all(s in provider.signed for s in sent_back), "the thinking came back, signed"
