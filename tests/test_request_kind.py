"""The ``background`` and ``subagent`` rules over every captured Claude Code request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_balancer.protocol.request_kind import AGENT_ID_HEADER, is_background, is_subagent

from .e2e.capture import load_fixtures

FIXTURES = dict(load_fixtures(Path(__file__).parent / "data" / "claude_code"))

MAIN, BACKGROUND, SUBAGENT = "main", "background", "subagent"
# What each fixture is, from what the capture asked the CLI for (the fixture's note says
# which request of the run it was); a new fixture must be added here.
EXPECTED: dict[str, str] = {
    "synthetic-billing-cch": MAIN,
    "synthetic-context-management": MAIN,
    "synthetic-count-tokens": MAIN,
    "synthetic-document-pdf": MAIN,
    "synthetic-document-text": MAIN,
    "synthetic-foreign-thinking": MAIN,
    "synthetic-mcp-servers": MAIN,
    "synthetic-system-message": MAIN,
    "synthetic-web-search": MAIN,
    "1.0.128/continue-1": MAIN,
    "1.0.128/plain-1": MAIN,
    "1.0.128/subagent-1": MAIN,  # the main turn that calls Task
    "1.0.128/subagent-2": SUBAGENT,  # the general-purpose subagent's turn
    "1.0.128/subagent-3": MAIN,  # the main turn after the Task result
    "1.0.128/thinking-1": MAIN,
    "1.0.128/thinking-2": MAIN,
    "1.0.128/tools-1": MAIN,
    "1.0.128/tools-2": BACKGROUND,  # haiku extracting file paths from a Bash result
    "1.0.128/tools-3": MAIN,
    "2.0.77/continue-1": MAIN,
    "2.0.77/plain-1": MAIN,
    "2.0.77/plain-2": SUBAGENT,  # Warmup: file search specialist, on haiku
    "2.0.77/plain-3": SUBAGENT,  # Warmup: command execution specialist
    "2.0.77/plain-4": SUBAGENT,  # Warmup: software architect and planning specialist
    "2.0.77/subagent-1": MAIN,
    "2.0.77/subagent-2": SUBAGENT,
    "2.0.77/subagent-3": SUBAGENT,
    "2.0.77/subagent-4": SUBAGENT,
    "2.0.77/subagent-5": SUBAGENT,  # the general-purpose subagent's turn
    "2.0.77/subagent-6": MAIN,
    "2.0.77/thinking-1": MAIN,
    "2.0.77/thinking-2": SUBAGENT,
    "2.0.77/thinking-3": SUBAGENT,
    "2.0.77/thinking-4": SUBAGENT,
    "2.0.77/thinking-5": MAIN,
    "2.0.77/tools-1": MAIN,
    "2.0.77/tools-2": BACKGROUND,  # the Bash path extractor on haiku-4-5
    "2.0.77/tools-3": MAIN,
    "2.1.197/continue-1": MAIN,
    "2.1.197/plain-1": MAIN,
    "2.1.197/tools-1": MAIN,
    "2.1.197/tools-2": MAIN,
    "2.1.332/continue-1": MAIN,
    "2.1.332/effort-1": MAIN,
    "2.1.332/plain-1": MAIN,
    "2.1.332/subagent-1": MAIN,  # the main turn that calls Agent
    "2.1.332/subagent-2": MAIN,  # after the Agent result (the agent runs in the background)
    "2.1.332/subagent-3": SUBAGENT,  # x-claude-code-agent-id, cc_is_subagent=true
    "2.1.332/subagent-4": MAIN,  # after the agent's completion notice
    "2.1.332/tools-1": MAIN,
    "2.1.332/tools-2": MAIN,
}


def _headers(fixture: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in fixture["headers"].items()]


def test_every_fixture_is_in_the_table() -> None:
    """A fixture captured later must be classified here by hand, not silently skipped."""
    assert sorted(FIXTURES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_kind(name: str) -> None:
    """Each captured request is classified as what the capture knows it to be."""
    fixture = FIXTURES[name]
    headers = _headers(fixture)
    kind = EXPECTED[name]
    assert is_subagent(fixture["body"], headers) is (kind == SUBAGENT)
    assert is_background(fixture["body"], headers) is (kind == BACKGROUND)


def test_agent_header_alone_is_a_subagent() -> None:
    """The 2.1.x header decides by itself, in any case, even with no system prompt."""
    assert is_subagent({"messages": []}, [(b"X-Claude-Code-Agent-Id", b"a94ed6a5297c1beb2")])
    assert not is_subagent({"messages": []}, [(b"x-claude-code-agent-id", b" ")])


def test_billing_flag_without_the_header() -> None:
    """``cc_is_subagent=true`` in the billing block counts when a proxy dropped the header."""
    body = FIXTURES["2.1.332/subagent-3"]["body"]
    headers = [h for h in _headers(FIXTURES["2.1.332/subagent-3"]) if h[0] != b"x-claude-code-agent-id"]
    assert is_subagent(body, headers)
    billing = {
        "type": "text",
        "text": "x-anthropic-billing-header: cc_version=2.1.332.ea4; cc_entrypoint=sdk-cli;",
    }
    assert not is_subagent({"system": [billing, {"type": "text", "text": "You are Claude Code."}]}, [])


def test_background_needs_claude_code() -> None:
    """A tool-less request from another client (the SDK, curl) is not a background call."""
    body = FIXTURES["2.0.77/tools-2"]["body"]
    assert is_background(body, [(b"x-app", b"cli")])
    assert is_background(body, [(b"user-agent", b"claude-cli/2.1.332 (external, sdk-cli)")])
    assert not is_background(body, [(b"user-agent", b"Anthropic/Python 0.79.0")])
    assert not is_background(body, [])


@pytest.mark.parametrize(
    "opening",
    [
        "You are Claude Code, Anthropic's official CLI for Claude.",
        "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
        "You are an interactive CLI tool that helps users with software engineering tasks.",
        "You are an agent working with the user toward their goals. Use Claude Code for Claude Code.",
        "Summarise this. You are an agent for Claude Code.",
    ],
)
def test_main_identities_are_not_subagents(opening: str) -> None:
    """The main prompt's and the CLI's own identity lines, and the phrase past the first
    sentence or mid-text, do not make a subagent."""
    assert not is_subagent({"system": [{"type": "text", "text": opening}]}, [(b"x-app", b"cli")])
    assert not is_subagent({"system": opening}, [])


_VALUES = (
    st.none()
    | st.integers()
    | st.text(max_size=20)
    | st.lists(
        st.dictionaries(
            st.sampled_from(["type", "text", "name"]), st.text(max_size=20) | st.none(), max_size=2
        ),
        max_size=3,
    )
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(["system", "tools", "messages", "model"]), _VALUES, max_size=4),
    st.lists(
        st.tuples(st.sampled_from([b"x-app", b"user-agent", AGENT_ID_HEADER]), st.binary(max_size=12)),
        max_size=3,
    ),
)
def test_any_shape_is_classified_without_error(
    payload: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    """Odd bodies (a string system, a non-list tools) are classified, never raise."""
    assert isinstance(is_subagent(payload, headers), bool)
    assert isinstance(is_background(payload, headers), bool)
