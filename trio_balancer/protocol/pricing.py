"""Prices and cost arithmetic. Pure.

USD per million tokens, from Anthropic's pricing page as of 2026-11 (Sonnet 5.5's cache-read
cut of 2026-10-07 included). Cache writes are priced by lifetime (5 minutes: 1.25x input;
1 hour: 2x input) and cache reads separately. Some models charge every token of a request at
a higher rate once its prompt (input + cache reads + cache writes) passes a threshold.

Claude on Bedrock and Vertex is priced as on Anthropic's API for the global endpoints (both
clouds' price lists match Anthropic's; their regional endpoints add 10 %, which an operator
sets with a ``[[prices]]`` row for that provider): a Bedrock or Vertex model id
(``global.anthropic.claude-sonnet-4-6``, ``claude-sonnet-4-5@20250929``) is read as the
Anthropic name it stands for. Gemini's own prices (Google's pricing page, 2026-11) have a long
prompt tier above 200k tokens and a cached-token price of a tenth of input; implicit caching
charges no write, so writes are priced as input.

A model with no price is not guessed at: its cost is ``None`` and the ledger flags it. Operators
add or override prices in the config (``[[prices]]``), per model glob and optionally per
provider (an OpenAI-compatible provider has prices of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import attrs

from trio_balancer.protocol.cloud_models import anthropic_model_name
from trio_balancer.protocol.usage import Usage

__all__ = ["BUILTIN_PRICES", "PRICES_AS_OF", "Price", "PriceTable", "Rates", "anthropic_model_name"]

PRICES_AS_OF = "2026-11-28"


@attrs.frozen
class Rates:
    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    @classmethod
    def standard(cls, input: float, output: float, cache_read_ratio: float = 0.1) -> Rates:
        """Anthropic's usual shape: writes 1.25x / 2x input, reads a fraction of input."""
        return cls(input, output, input * 1.25, input * 2.0, round(input * cache_read_ratio, 6))

    @classmethod
    def gemini(cls, input: float, output: float) -> Rates:
        """Gemini's shape: cached tokens a tenth of input, no separate write price."""
        return cls(input, output, input, input, round(input * 0.1, 6))


@attrs.frozen
class Price:
    model: str  # a glob over model ids
    rates: Rates
    provider: str | None = None  # None: any provider
    long_prompt_threshold: int | None = None  # prompts above this many tokens use long_rates
    long_rates: Rates | None = None

    def rates_for(self, prompt_tokens: int) -> Rates:
        if (
            self.long_prompt_threshold is not None
            and self.long_rates is not None
            and prompt_tokens > self.long_prompt_threshold
        ):
            return self.long_rates
        return self.rates


def _p(model: str, rates: Rates, **kw: object) -> Price:
    return Price(model=model, rates=rates, **kw)  # type: ignore[arg-type]


_OPUS_45 = Rates.standard(5, 25)
_OPUS_4 = Rates.standard(15, 75)
_SONNET_4 = Rates.standard(3, 15)
_SONNET_4_LONG = Rates.standard(6, 22.5)

# Most specific first: the first glob that matches wins.
BUILTIN_PRICES: tuple[Price, ...] = (
    _p("claude-fable-5-1*", Rates.standard(10, 50, 0.025)),
    _p("claude-mythos-5-1*", Rates.standard(10, 50, 0.025)),
    _p("claude-fable-5*", Rates.standard(10, 50)),
    _p("claude-mythos-5*", Rates.standard(10, 50)),
    _p("claude-opus-5-5*", Rates.standard(4, 20, 0.05)),
    _p("claude-opus-5*", _OPUS_45),
    _p("claude-opus-4-8*", _OPUS_45),
    _p("claude-opus-4-7*", _OPUS_45),
    _p("claude-opus-4-6*", _OPUS_45),
    _p("claude-opus-4-5*", _OPUS_45),
    _p("claude-opus-4-1*", _OPUS_4),
    _p("claude-opus-4-0*", _OPUS_4),
    _p("claude-opus-4-2025*", _OPUS_4),
    _p("claude-sonnet-5-5*", Rates.standard(2, 10, 0.05)),
    _p("claude-sonnet-5*", Rates.standard(2, 10)),
    _p("claude-sonnet-4-6*", _SONNET_4),
    _p("claude-sonnet-4-5*", _SONNET_4, long_prompt_threshold=200_000, long_rates=_SONNET_4_LONG),
    _p("claude-sonnet-4-0*", _SONNET_4, long_prompt_threshold=200_000, long_rates=_SONNET_4_LONG),
    _p("claude-sonnet-4-2025*", _SONNET_4, long_prompt_threshold=200_000, long_rates=_SONNET_4_LONG),
    _p(
        "claude-haiku-5-5*",
        Rates.standard(0.10, 0.50),
        long_prompt_threshold=100_000,
        long_rates=Rates.standard(0.50, 2.50),
    ),
    _p("claude-haiku-4-5*", Rates.standard(1, 5)),
    _p("claude-3-5-haiku*", Rates.standard(0.80, 4)),
    _p("claude-3-haiku*", Rates.standard(0.25, 1.25, 0.12)),
    _p("gemini-3*-pro*", Rates.gemini(2, 12), long_prompt_threshold=200_000, long_rates=Rates.gemini(4, 18)),
    _p(
        "gemini-2.5-pro*",
        Rates.gemini(1.25, 10),
        long_prompt_threshold=200_000,
        long_rates=Rates.gemini(2.5, 15),
    ),
    _p("gemini-3*-flash-lite*", Rates.gemini(0.10, 0.40)),
    _p("gemini-2.5-flash-lite*", Rates.gemini(0.10, 0.40)),
    _p("gemini-3*-flash*", Rates.gemini(0.50, 3)),
    _p("gemini-2.5-flash*", Rates.gemini(0.30, 2.50)),
)


class PriceTable:
    def __init__(self, overrides: Sequence[Price] = (), *, builtin: Sequence[Price] = BUILTIN_PRICES) -> None:
        # Configured prices first (provider-specific before general), then the built-in ones.
        self._prices = (
            [p for p in overrides if p.provider] + [p for p in overrides if not p.provider] + list(builtin)
        )

    def find(self, model: str, provider: str | None = None) -> Price | None:
        """The first price whose glob matches ``model`` as given, else as the Anthropic name
        a cloud's id stands for (so an operator's row for a cloud id still comes first)."""
        found = self._find(model, provider)
        if found is None and (name := anthropic_model_name(model)) != model:
            found = self._find(name, provider)
        return found

    def _find(self, model: str, provider: str | None) -> Price | None:
        for price in self._prices:
            if price.provider is not None and price.provider != provider:
                continue
            if fnmatchcase(model, price.model):
                return price
        return None

    def cost(self, usage: Usage, model: str, provider: str | None = None) -> float | None:
        """USD for ``usage`` of ``model``; ``None`` when the model has no known price."""
        price = self.find(model, provider)
        if price is None:
            return None
        prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        r = price.rates_for(prompt)
        if usage.cache_creation_5m is not None or usage.cache_creation_1h is not None:
            w5 = usage.cache_creation_5m or 0
            w1 = usage.cache_creation_1h or 0
            w5 += max(0, usage.cache_creation_input_tokens - w5 - w1)  # any unsplit rest: 5 min
        else:
            w5, w1 = usage.cache_creation_input_tokens, 0
        total = (
            usage.input_tokens * r.input
            + usage.output_tokens * r.output
            + w5 * r.cache_write_5m
            + w1 * r.cache_write_1h
            + usage.cache_read_input_tokens * r.cache_read
        )
        return round(total / 1_000_000, 8)
