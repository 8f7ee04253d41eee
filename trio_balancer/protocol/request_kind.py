"""What kind of Claude Code request this is: a background call, a subagent's turn. Pure.

The route conditions ``background`` and ``subagent`` are these two functions. Each rule rests
on requests the real CLI sent through the balancer (``tests/data/claude_code/<version>/``,
captured with ``tests/e2e/capture.py``; the ``subagent`` scenario makes the main conversation
call the subagent tool and captures the subagent's own requests).

:func:`is_subagent`: the request is a turn of a subagent (a conversation the CLI started for
the ``Agent`` tool, ``Task`` before 2.1), or the warmup of one. Any of:

1. an ``x-claude-code-agent-id`` header (2.1.332: on every request of a subagent, a random id
   per agent instance; a subagent started by a subagent adds ``x-claude-code-parent-agent-id``;
   the main conversation sends neither; asked for in claude-code#49204, relayed by CLIProxyAPI
   since 2.1.234);
2. ``cc_is_subagent=true`` in the billing block at the top of the system prompt (2.1.332, on
   the same requests: still there when a proxy in between drops the header);
3. a system text block that opens with a subagent's identity, ``You are a(n) ... for Claude
   Code`` in its first sentence: the general-purpose agent's ``You are an agent for Claude
   Code, Anthropic's official CLI for Claude.`` (1.0.128, 2.0.77, 2.1.332), and 2.0.77's
   warmups of the built-in agents (``You are a file search specialist for Claude Code``,
   ``a command execution specialist``, ``a software architect and planning specialist``,
   each with its own tool list, on sonnet-4-5 or haiku-4-5). The main conversation opens with
   ``You are an interactive CLI tool`` (1.0, 2.0), ``You are an interactive agent`` (2.1.197)
   or ``You are an agent working with the user`` (2.1.332), and the CLI's own identity line is
   ``You are Claude Code, ...``: none of them matches. This is the only signal before 2.1;
   a user-defined subagent there, with a system prompt of its own, is not recognised.

A warmup (2.0.77: one request per built-in agent type, the message ``Warmup``) counts as the
subagent's: it warms the prompt cache for that subagent, so it should go where the subagent
goes. Not a rule: "subagents lack the ``Agent`` tool" (one router's heuristic): 2.1.332's
general-purpose subagent carries it, and only the third level lacked it.

:func:`is_background`: one of the CLI's own side calls, not a turn of a conversation: all of

1. from Claude Code: ``x-app: cli`` (every captured version, side calls included; 2.1.234
   may send ``cli-bg`` instead, by CLIProxyAPI#4982's reading of its source) or a
   ``claude-cli/`` user agent;
2. no tools: every captured conversation turn, main or subagent, declares tools (12 to 24),
   and every captured side call declares none: the Bash path extractor (1.0.128:
   ``claude-3-5-haiku-20241022``, ``max_tokens`` 512, system ``Extract any file paths that
   this command reads or modifies``; 2.0.77: the same on ``claude-haiku-4-5-20251001`` with
   ``max_tokens`` 32000), and what other gateways' users report for the title, topic and quota
   checks, which the headless CLI here did not send;
3. not a subagent's (above).

Not the model name: claude-code-router calls every ``claude-*haiku*`` request background, but
2.0.77 runs the file search subagent and its warmup on haiku, with tools, and a user may pick
haiku for the conversation itself; match the model with the route's glob when that is the
intent (``match = "claude-haiku-*"`` with ``background = true``). A session started with every
tool disabled would look like background calls throughout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .billing import BILLING_PREFIX

__all__ = ["AGENT_ID_HEADER", "is_background", "is_subagent"]

AGENT_ID_HEADER = b"x-claude-code-agent-id"
# Claude Code's own requests: the x-app header (every captured version) or its user agent.
_CLI_APPS = (b"cli", b"cli-bg")
_CLI_AGENT = b"claude-cli/"
SUBAGENT_BILLING_FLAG = "cc_is_subagent=true"
# The billing block, the SDK identity line and the agent's identity come first: a rule looks
# at the start of the first few system blocks only, never through a 30 KB prompt.
_SYSTEM_BLOCKS = 4
_OPENING = 240
_SUBAGENT_IDENTITY = re.compile(r"\s*You are an? [^.\n]*?\bfor Claude Code\b")


def is_subagent(payload: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request is a Claude Code subagent's turn or warmup (rules in the module doc)."""
    for name, value in headers:
        if name.lower() == AGENT_ID_HEADER and value.strip():
            return True
    for text in _system_openings(payload.get("system")):
        if text.startswith(BILLING_PREFIX):
            if SUBAGENT_BILLING_FLAG in text.split("\n", 1)[0]:
                return True
        elif _SUBAGENT_IDENTITY.match(text):
            return True
    return False


def is_background(payload: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request is one of Claude Code's background calls (rules in the module doc)."""
    if payload.get("tools"):
        return False
    headers = list(headers)
    return _from_claude_code(headers) and not is_subagent(payload, headers)


def _from_claude_code(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        name = name.lower()
        if name == b"x-app" and value.strip().lower() in _CLI_APPS:
            return True
        if name == b"user-agent" and value.lower().startswith(_CLI_AGENT):
            return True
    return False


def _system_openings(system: Any) -> Iterable[str]:
    if isinstance(system, str):
        yield system[:_OPENING]
    elif isinstance(system, list):
        for block in system[:_SYSTEM_BLOCKS]:
            text = block.get("text") if isinstance(block, dict) else None
            if isinstance(text, str):
                yield text[:_OPENING]
