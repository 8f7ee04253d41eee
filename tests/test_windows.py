"""Context windows, pure: the known models' table, the "prompt too long" answers of each
provider kind, the plan's skip rule, and where a too-long prompt goes next."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_balancer.config import parse_config
from trio_balancer.policy.failover import CLIENT_FAULT, PROMPT_TOO_LONG
from trio_balancer.policy.plan import fit_windows, larger_windows, must_estimate, resolve_windows, window_of
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol.windows import known_window, prompt_too_long, window_need, window_need_bound

from .e2e.capture import load_fixtures
from .helpers import fit_provider

FIXTURES = Path(__file__).parent / "data" / "claude_code"


class TestKnownWindows:
    @pytest.mark.parametrize(
        ("model", "window"),
        [
            ("claude-sonnet-4-6", 200_000),
            ("claude-haiku-4-5-20251001", 200_000),
            ("claude-sonnet-5", 1_000_000),
            ("claude-opus-5-5", 1_000_000),
            ("claude-sonnet-4-6[1m]", 1_000_000),
            ("gpt-4o-mini", 128_000),
            ("deepseek-chat", 131_072),
            ("deepseek-reasoner", 131_072),
            ("gemini-2.5-pro", 1_048_576),
            ("kimi-k2-0905-preview", 262_144),
            ("glm-4.6", 202_752),
            ("sim-1", 0),
            ("my-local-model", 0),
        ],
    )
    def test_table(self, model: str, window: int) -> None:
        assert known_window(model) == window

    def test_the_long_context_beta_raises_claude_models_to_1m(self) -> None:
        assert known_window("claude-sonnet-4-5-20250929", long_context=True) == 1_000_000
        assert known_window("claude-opus-4-6", long_context=True) == 1_000_000
        assert known_window("claude-sonnet-4-5-20250929") == 200_000
        assert known_window("deepseek-chat", long_context=True) == 131_072

    def test_the_target_wins_then_the_provider_then_the_table(self) -> None:
        deep = fit_provider("openai", preset="deepseek")
        assert window_of(Attempt(deep, "deepseek-chat", 64_000)) == 64_000
        assert window_of(Attempt(deep, "deepseek-chat")) == 128_000
        assert window_of(Attempt(fit_provider(), "claude-sonnet-4-6")) == 200_000
        assert window_of(Attempt(fit_provider(), "sim-1")) == 0

    def test_a_target_declares_its_window_in_the_config(self) -> None:
        config = parse_config(
            {
                "providers": [
                    {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:1", "api_key": "k"}
                ],
                "routes": [
                    {"match": "*", "targets": [{"provider": "p", "model": "m", "context_window": 128000}]}
                ],
            }
        )
        assert config.routes[0].targets[0].context_window == 128_000


def _anthropic(message: str) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    ).encode()


def _openai(message: str, code: str | None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()


GEMINI = {
    "error": {
        "code": 400,
        "message": "The input token count (317740) exceeds the maximum number of tokens allowed (131072).",
        "status": "INVALID_ARGUMENT",
    }
}
# Real answers, as users reported them (the sources are in protocol/windows.py).
TOO_LONG = [
    _anthropic("prompt is too long: 219898 tokens > 200000 maximum"),
    _anthropic(
        "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000,"
        " decrease input length or `max_tokens` and try again"
    ),
    _openai(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in"
        " 204308 tokens. Please reduce the length of the messages.",
        "context_length_exceeded",
    ),
    _openai("Your input exceeds the context window of this model.", "context_length_exceeded"),
    _openai(
        "This model's maximum context length is 131072 tokens. However, you requested 131134 tokens"
        " (122942 in the messages, 8192 in the completion). Please reduce the length of the messages"
        " or completion.",
        "invalid_request_error",
    ),
    _openai("Invalid request: Your request exceeded model token limit: 262144 (requested: 269030)", None),
    json.dumps(
        {
            "error": {
                "code": 400,
                "message": "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
                "status": "INVALID_ARGUMENT",
            }
        }
    ).encode(),
    json.dumps([GEMINI]).encode(),  # its native API: a list of errors
]
NOT_TOO_LONG = [
    _anthropic("messages.0.content: Field required"),
    _anthropic("max_tokens: 300000 > 64000, which is the maximum allowed number of output tokens"),
    _openai("Invalid max_tokens value, the valid range of max_tokens is [1, 8192]", "invalid_request_error"),
    b"<html>bad request</html>",
    b"",
]


class TestPromptTooLong:
    @pytest.mark.parametrize("body", TOO_LONG)
    def test_each_kinds_answer_is_recognised(self, body: bytes) -> None:
        assert prompt_too_long(400, body)

    @pytest.mark.parametrize("body", NOT_TOO_LONG)
    def test_other_request_errors_are_not(self, body: bytes) -> None:
        assert not prompt_too_long(400, body)

    def test_only_request_errors(self) -> None:
        assert not prompt_too_long(500, TOO_LONG[0]) and not prompt_too_long(200, TOO_LONG[0])

    def test_the_verdict_fails_over_and_blames_nobody(self) -> None:
        assert PROMPT_TOO_LONG.retry and PROMPT_TOO_LONG.kind is None and PROMPT_TOO_LONG.too_long
        assert not CLIENT_FAULT.too_long


def _attempts(windows: list[int]) -> list[Attempt]:
    return [Attempt(fit_provider(name=f"p{i}"), f"m{i}", w) for i, w in enumerate(windows)]


windows_st = st.lists(
    st.sampled_from([0, 8_000, 64_000, 128_000, 200_000, 1_000_000]), min_size=1, max_size=6
)


class TestSkipRule:
    @given(windows=windows_st, need=st.integers(1, 2_000_000))
    def test_skipped_iff_the_known_window_is_too_small_and_never_all(
        self, windows: list[int], need: int
    ) -> None:
        kept, skipped = fit_windows(_attempts(windows), need)
        assert kept, "never every target"
        assert len(kept) + len(skipped) == len(windows)
        if any(w == 0 or w >= need for w in windows):
            assert all(a.context_window == 0 or a.context_window >= need for a in kept)
            assert all(0 < a.context_window < need for a, _ in skipped)
        else:  # none fits: the largest stay, the provider decides
            assert {a.context_window for a in kept} == {max(windows)}
        names = [a.provider.name for a in kept]
        assert names == sorted(names)  # the plan's order is kept

    @given(windows=windows_st, need=st.integers(1, 2_000_000), slack=st.integers(0, 1_000_000))
    def test_no_estimate_only_when_it_could_skip_nothing(
        self, windows: list[int], need: int, slack: int
    ) -> None:
        """With any bound of the need, not estimating gives the plan estimating would."""
        attempts = _attempts(windows)
        if not must_estimate(attempts, need + slack):
            assert fit_windows(attempts, need) == (attempts, [])

    def test_windows_resolved_from_target_provider_or_table(self) -> None:
        deep = fit_provider("openai", preset="deepseek")
        attempts = [Attempt(deep, "deepseek-chat", 0), Attempt(fit_provider(), "claude-sonnet-4-5", 0)]
        assert [a.context_window for a in resolve_windows(attempts)] == [128_000, 200_000]
        assert [a.context_window for a in resolve_windows(attempts, long_context=True)] == [
            128_000,
            1_000_000,
        ]

    def test_the_reason_names_window_and_estimate(self) -> None:
        _, [(attempt, why)] = fit_windows(_attempts([128_000, 1_000_000]), 200_123)
        assert attempt.provider.name == "p0" and why == "context window 128000 < 200123 estimated tokens"


class TestLargerWindows:
    @given(windows=windows_st, failed=st.sampled_from([0, 64_000, 200_000]))
    def test_only_larger_or_unknown_after_a_known_window(self, windows: list[int], failed: int) -> None:
        remaining = _attempts(windows)
        failed_attempt: Any = Attempt(fit_provider(name="f"), "f", failed)
        nxt = larger_windows(remaining, failed_attempt)
        if failed == 0:
            assert nxt == remaining
        else:
            assert nxt == [a for a in remaining if a.context_window == 0 or a.context_window > failed]


class TestNeed:
    def test_input_estimate_plus_max_tokens(self) -> None:
        body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
        assert window_need(body) == window_need({**body, "max_tokens": 0}) + 1000

    @pytest.mark.parametrize("fixture", [pytest.param(f, id=i) for i, f in load_fixtures(FIXTURES)])
    def test_the_bound_holds_on_every_captured_claude_code_request(self, fixture: dict[str, Any]) -> None:
        body = fixture["body"]
        assert isinstance(body, dict)  # every fixture is a JSON request
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        assert window_need(body) <= window_need_bound(raw, body)

    @given(text=st.text(max_size=300), image=st.booleans())
    def test_the_bound_holds_on_any_text(self, text: str, image: bool) -> None:
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if image:
            content.append({"type": "image", "source": {"type": "url", "url": "http://x/i.png"}})
        body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": content}]}
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        assert window_need(body) <= window_need_bound(raw, body)
