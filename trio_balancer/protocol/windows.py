"""Context windows: the known models' windows, and a provider's "prompt too long" answer. Pure.

A window is the tokens of input plus output a model holds; 0 means unknown (never skipped).
The table is a fallback for targets whose config and provider capabilities say nothing; an
operator's ``context_window`` always wins, since a deployment may cap a model lower.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from trio_balancer.protocol.tokens import IMAGE_TOKENS, estimate_request

__all__ = [
    "LONG_CONTEXT_BETA",
    "OUTPUT_RESERVE",
    "asks_long_context",
    "known_window",
    "prompt_too_long",
    "window_need",
    "window_need_bound",
]

# Anthropic's 1M window for the models that offer it behind this beta (Claude Code sends it
# for a `[1m]` model; field-lessons: "1M context via context-1m-2025-08-07 or a [1m] suffix").
LONG_CONTEXT_BETA = "context-1m-2025-08-07"

# First match wins, so specific globs come before general ones. Sources (late 2026):
# - Claude: platform.claude.com models overviews: Sonnet 4.5 200K; Sonnet 5, Opus 5.5,
#   Fable 5.x 1M native; Sonnet 4, Sonnet 4.5, Opus 4.6 1M with the beta above
#   (support.claude.com article 8606395); every other Claude model 200K without it.
# - gpt-4o / gpt-4.1: OpenAI's "maximum context length is 128000 tokens" answers
#   (assafelovic/gpt-researcher#680); gpt-4.1 1,047,576 (OpenAI model page).
# - DeepSeek V3.x chat/reasoner 128K: "maximum context length is 131072 tokens"
#   (evalstate/fast-agent#621; RooCodeInc/Roo-Code#7268).
# - Gemini 2.5: "exceeds the maximum number of tokens allowed (1048576)"
#   (google-gemini/gemini-cli#6678).
# - Kimi K2 262,144: "exceeded model token limit: 262144" (MoonshotAI/kimi-cli#2011).
# - GLM-4.6 202,752 (huggingface.co/zai-org/GLM-4.6: "expanded from 128K to 200K").
_KNOWN: tuple[tuple[str, int], ...] = (
    ("claude-sonnet-5*", 1_000_000),
    ("claude-opus-5*", 1_000_000),
    ("claude-fable-*", 1_000_000),
    ("claude-*[[]1m[]]", 1_000_000),
    ("claude-*", 200_000),
    ("gpt-4.1*", 1_047_576),
    ("gpt-4o*", 128_000),
    ("deepseek-chat", 131_072),
    ("deepseek-reasoner", 131_072),
    ("gemini-2.5-*", 1_048_576),
    ("kimi-k2*", 262_144),
    ("glm-4.6*", 202_752),
)
# With the long-context beta, a Claude model counts as 1M: the client asked for it (Claude Code
# sends the beta only for a `[1m]` model), and a table too small would skip a target that holds
# the prompt. Haiku never has 1M: counted so, its "prompt too long" left no larger window to fall
# over to, and the 1M model behind it went untried (found by an attack).
_ONE_M = 1_000_000


# The output a window must hold room for, at most. Claude Code asks for 32k-128k tokens of
# output (2.1.332: max_tokens 128000, a 128k model's whole window), which other providers clamp
# to their own output limit (DeepSeek's is 8k): counting all of it skipped every 128k target for
# every Claude Code turn (found by the e2e test). The skip is for prompts that cannot fit; a
# max_tokens too large for a model is the provider's to clamp or to refuse (a prompt-too-long
# 400, which fails over).
OUTPUT_RESERVE = 8192


def asks_long_context(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the client asked for Anthropic's 1M window (its ``context-1m`` beta)."""
    return any(name == b"anthropic-beta" and LONG_CONTEXT_BETA.encode() in value for name, value in headers)


def known_window(model: str, *, long_context: bool = False) -> int:
    """The window of ``model`` from the table above; 0 when the model is not in it."""
    if long_context and model.startswith("claude-") and "haiku" not in model:
        return _ONE_M
    for glob, window in _KNOWN:
        if fnmatchcase(model, glob):
            return window
    return 0


def window_need(payload: Mapping[str, Any]) -> int:
    """Tokens a request needs of a window: its estimated input plus ``max_tokens``, counted up to
    :data:`OUTPUT_RESERVE` (see there)."""
    return estimate_request(payload) + _max_tokens(payload)


def window_need_bound(body: bytes, payload: Mapping[str, Any]) -> int:
    """A bound :func:`window_need` never exceeds, from the body's size alone (no text read).

    The estimate gives at most about one token per byte of JSON (tokens.py: a one-letter word
    and its separator are 2 bytes for 1 token; an escaped newline 2 bytes for 1.2), plus a fixed
    cost per image or document block, which may be a short URL. Twice the size leaves room.
    """
    blocks = body.count(b'"image"') + body.count(b'"document"')
    return 2 * len(body) + IMAGE_TOKENS * blocks + _max_tokens(payload)


def _max_tokens(payload: Mapping[str, Any]) -> int:
    value = payload.get("max_tokens")
    return min(value, OUTPUT_RESERVE) if isinstance(value, int) and not isinstance(value, bool) else 0


# What each provider kind says when the prompt does not fit (all HTTP 400):
# - Anthropic: "prompt is too long: 219898 tokens > 200000 maximum" (earendil-works/pi#102),
#   and "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000";
# - OpenAI: code "context_length_exceeded", "This model's maximum context length is 128000
#   tokens. However, your messages resulted in ..." (crewAIInc/crewAI-examples#121);
# - DeepSeek and vLLM: the same "maximum context length" text, code "invalid_request_error"
#   (FoundationAgents/OpenManus#79);
# - Kimi: "Invalid request: Your request exceeded model token limit: 262144 (requested: ...)";
# - Gemini: "The input token count (1200293) exceeds the maximum number of tokens allowed
#   (1048576)." (google-gemini/gemini-cli#6678).
_TOO_LONG = re.compile(
    r"prompt is too long"
    r"|exceed(?:s|ed)? (?:the )?context (?:limit|window)"
    r"|maximum context length"
    r"|exceeded model token limit"
    r"|input token count .{0,40}exceeds the maximum number of tokens"
    r"|input is too long for requested model",  # Bedrock's ValidationException
    re.IGNORECASE,
)
_TOO_LONG_CODES = frozenset({"context_length_exceeded"})


def prompt_too_long(status: int, body: bytes) -> bool:
    """Whether a provider's error answer says the prompt does not fit the model's window."""
    if status not in (400, 413) or len(body) > 64 * 1024:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if isinstance(doc, list) and doc:  # Gemini's native API answers a list of errors
        doc = doc[0]
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        error = doc if isinstance(doc, dict) else {}  # Bedrock's: {"message": ...} at the top
    if error.get("code") in _TOO_LONG_CODES:
        return True
    message = error.get("message")
    return isinstance(message, str) and _TOO_LONG.search(message) is not None
