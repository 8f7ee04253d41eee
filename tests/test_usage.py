"""Usage extraction from realistic streams, estimates when it is missing, and cost arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from trio_balancer.protocol.pricing import BUILTIN_PRICES, Price, PriceTable, Rates
from trio_balancer.protocol.sse import SSEDecoder
from trio_balancer.protocol.usage import ESTIMATED, PARTIAL, REPORTED, Usage, UsageTracker

from .fakes import anthropic_text_events, sse

REQUEST = {
    "model": "m",
    "messages": [{"role": "user", "content": "Explain the flight module in two sentences."}],
}


def track(events: list[bytes]) -> UsageTracker:
    tracker = UsageTracker()
    decoder = SSEDecoder()
    for e in decoder.feed(b"".join(events)):
        tracker.observe(e)
    return tracker


def stream_with(
    start_usage: dict[str, Any] | None, delta_usage: dict[str, Any] | None, texts: list[str]
) -> list[bytes]:
    events = anthropic_text_events(texts, usage=False)
    if start_usage is not None:
        events[0] = sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "model": "x",
                    "content": [],
                    "usage": start_usage,
                },
            },
        )
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    if delta_usage is not None:
        delta["usage"] = delta_usage
    events[-2] = sse("message_delta", delta)
    return events


class TestExtraction:
    def test_anthropic_with_cache_tokens(self) -> None:
        start = {
            "input_tokens": 12,
            "cache_creation_input_tokens": 2048,
            "cache_read_input_tokens": 30000,
            "output_tokens": 1,
            "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 48},
        }
        u = track(stream_with(start, {"output_tokens": 87}, ["Hello"])).result(REQUEST)
        assert u == Usage(12, 87, 2048, 30000, 2000, 48, REPORTED)

    def test_message_start_output_placeholder_is_not_the_count(self) -> None:
        """Anthropic sends output_tokens: 1 at the start; without a final count, estimate."""
        u = track(stream_with({"input_tokens": 12, "output_tokens": 1}, None, ["word " * 40])).result(REQUEST)
        assert u.source == PARTIAL and u.input_tokens == 12 and u.output_tokens > 10

    def test_usage_only_in_message_delta(self) -> None:
        u = track(
            stream_with(
                None, {"input_tokens": 300, "output_tokens": 55, "cache_read_input_tokens": 100}, ["x"]
            )
        ).result(REQUEST)
        assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.source) == (
            300,
            55,
            100,
            REPORTED,
        )

    def test_cumulative_deltas_not_added(self) -> None:
        events = stream_with({"input_tokens": 5}, {"output_tokens": 10}, ["a"])
        events.insert(
            -2, sse("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 4}})
        )
        assert track(events).result(REQUEST).output_tokens == 10

    def test_no_usage_at_all_is_estimated_never_zero(self) -> None:
        """The reference failure: no usage anywhere. Counts come from the request and the text."""
        texts = ["The flight owns its upstream reader; ", "listeners get bounded channels. ", "你好，世界。"]
        u = track(stream_with(None, None, texts)).result(REQUEST)
        assert u.source == ESTIMATED
        assert u.input_tokens > 5 and u.output_tokens > 10

    def test_reported_zero_output_with_text_is_estimated(self) -> None:
        u = track(
            stream_with({"input_tokens": 9}, {"output_tokens": 0}, ["plenty of words here " * 5])
        ).result(REQUEST)
        assert u.source == PARTIAL and u.output_tokens > 0

    def test_reported_zero_input_without_cache_is_estimated(self) -> None:
        u = track(stream_with({"input_tokens": 0}, {"output_tokens": 3}, ["x"])).result(REQUEST)
        assert u.source == PARTIAL and u.input_tokens > 0

    def test_zero_input_with_full_cache_hit_is_real(self) -> None:
        u = track(
            stream_with({"input_tokens": 0, "cache_read_input_tokens": 5000}, {"output_tokens": 3}, ["x"])
        ).result(REQUEST)
        assert u.source == REPORTED and u.input_tokens == 0

    def test_untrusted_output_is_estimated(self) -> None:
        u = track(stream_with(None, {"output_tokens": 7}, ["x"])).result(REQUEST, trust_output=False)
        assert u.source == ESTIMATED

    def test_non_stream_message(self) -> None:
        tracker = UsageTracker()
        tracker.observe_message(
            {"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 4, "output_tokens": 2}}
        )
        assert tracker.result(REQUEST) == Usage(4, 2, source=REPORTED)

    def test_non_stream_without_usage(self) -> None:
        tracker = UsageTracker()
        tracker.observe_message(
            {
                "content": [
                    {"type": "text", "text": "a longer answer " * 10},
                    {"type": "tool_use", "input": {"a": 1}},
                ]
            }
        )
        u = tracker.result(REQUEST)
        assert u.source == ESTIMATED and u.output_tokens > 20

    def test_malformed_usage_event_ignored(self) -> None:
        events = stream_with({"input_tokens": 5}, {"output_tokens": 6}, ["x"])
        events.insert(1, b"event: message_delta\ndata: {not json\n\n")
        assert track(events).result(REQUEST).output_tokens == 6


class TestPricing:
    def table(self) -> PriceTable:
        return PriceTable()

    @pytest.mark.parametrize(
        ("field", "tokens", "model", "usd"),
        [
            ("input_tokens", 1_000_000, "claude-opus-4-6", 5.0),
            ("output_tokens", 1_000_000, "claude-opus-4-6", 25.0),
            ("cache_read_input_tokens", 1_000_000, "claude-opus-4-6", 0.5),
            ("input_tokens", 1_000_000, "claude-sonnet-5-5", 2.0),
            ("cache_read_input_tokens", 1_000_000, "claude-sonnet-5-5", 0.10),
            ("output_tokens", 1_000_000, "claude-haiku-4-5-20251001", 5.0),
            ("input_tokens", 1_000_000, "claude-opus-4-1-20250805", 15.0),
            ("cache_read_input_tokens", 1_000_000, "claude-fable-5-1", 0.25),
        ],
    )
    def test_each_price_class(self, field: str, tokens: int, model: str, usd: float) -> None:
        assert self.table().cost(Usage(**{field: tokens}), model) == pytest.approx(usd)

    def test_cache_writes_by_lifetime(self) -> None:
        u = Usage(
            cache_creation_input_tokens=1_500_000, cache_creation_5m=1_000_000, cache_creation_1h=500_000
        )
        assert self.table().cost(u, "claude-opus-4-6") == pytest.approx(6.25 + 5.0)
        assert self.table().cost(
            Usage(cache_creation_input_tokens=1_000_000), "claude-opus-4-6"
        ) == pytest.approx(6.25)

    def test_long_prompt_tier_applies_to_every_token(self) -> None:
        small = Usage(input_tokens=50_000, output_tokens=1_000)
        big = Usage(input_tokens=90_000, cache_read_input_tokens=20_000, output_tokens=1_000)
        t = self.table()
        assert t.cost(small, "claude-haiku-5-5") == pytest.approx((50_000 * 0.10 + 1_000 * 0.50) / 1e6)
        assert t.cost(big, "claude-haiku-5-5") == pytest.approx(
            (90_000 * 0.50 + 20_000 * 0.05 + 1_000 * 2.50) / 1e6
        )

    def test_unknown_model_is_not_guessed(self) -> None:
        assert self.table().cost(Usage(input_tokens=10), "deepseek-chat") is None

    def test_config_prices_win_and_provider_specific_first(self) -> None:
        table = PriceTable(
            [
                Price("deepseek-*", Rates.standard(0.27, 1.10)),
                Price("claude-opus-4-6", Rates.standard(1, 1), provider="discount"),
            ]
        )
        assert table.cost(Usage(input_tokens=1_000_000), "deepseek-chat") == pytest.approx(0.27)
        assert table.cost(Usage(input_tokens=1_000_000), "claude-opus-4-6", "discount") == pytest.approx(1.0)
        assert table.cost(Usage(input_tokens=1_000_000), "claude-opus-4-6", "anthropic") == pytest.approx(5.0)

    def test_every_default_model_is_priced(self) -> None:
        from trio_balancer.config import DEFAULT_MODELS

        table = PriceTable()
        assert [m for m in DEFAULT_MODELS if table.find(m) is None] == []
        assert len(BUILTIN_PRICES) > 10
