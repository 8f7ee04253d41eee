"""A ledger full of plausible records, for trying the console and measuring its queries
(``trio-balancer sample-ledger``; tests; bench/console.py).

``fill(store, count, days=30)`` writes ``count`` records spread over the last ``days`` days with
a daily rhythm: a handful of keys of very different appetites, the current Claude models and a
couple of others, four providers, some failovers, errors, estimated usage and unpriced models,
like a team's month. Seeded, so two runs write the same ledger.
"""

from __future__ import annotations

import math
import random
import time

from trio_balancer.ledger.record import Record
from trio_balancer.ledger.store import LedgerStore

__all__ = ["fill"]

CLIENTS = ("alice", "bob", "carol", "dave", "erin", "ci-bot", "frank", "grace")
MODELS = (
    ("claude-sonnet-4-5-20250929", 3.0, 15.0),
    ("claude-opus-4-6", 5.0, 25.0),
    ("claude-haiku-4-5-20251001", 1.0, 5.0),
    ("gemini-2.5-pro", 1.25, 10.0),
    ("glm-4.6", 0.0, 0.0),  # unpriced
)
PROVIDERS = ("anthropic", "bedrock", "vertex", "openrouter")
BATCH = 5_000


def _record(rng: random.Random, now: float, days: int, i: int) -> Record:
    # More work in (UTC) working hours: accept a time with the day's rhythm as its odds.
    while True:
        started = now - rng.random() * days * 86400
        hour = (started % 86400) / 3600
        if rng.random() < 0.25 + 0.75 * math.exp(-(((hour - 14) / 4) ** 2)):
            break
    client = CLIENTS[min(len(CLIENTS) - 1, int(rng.expovariate(0.6)))]
    model, rate_in, rate_out = MODELS[min(len(MODELS) - 1, int(rng.expovariate(1.1)))]
    provider = PROVIDERS[min(len(PROVIDERS) - 1, int(rng.expovariate(1.5)))]
    failed_over = rng.random() < 0.04
    status = 200 if rng.random() > 0.03 else rng.choice((400, 429, 502, 529))
    inp, out = int(rng.lognormvariate(9, 1.2)), int(rng.lognormvariate(6, 1.0))
    cache_read = int(inp * rng.random() * 3) if rng.random() < 0.6 else 0
    if status != 200:
        inp = out = cache_read = 0
    usage_source = "none" if status != 200 else ("estimated" if rng.random() < 0.02 else "reported")
    priced = rate_in > 0
    cost = (inp * rate_in + out * rate_out + cache_read * rate_in * 0.1) / 1e6 if priced else None
    attempts: list[dict[str, object]] = []
    if failed_over:
        first = PROVIDERS[(PROVIDERS.index(provider) + 1) % len(PROVIDERS)]
        attempts.append(
            {
                "provider": first,
                "model": model,
                "error": f"provider {first!r}: HTTP 529 overloaded_error",
                "status": 529,
            }
        )
    attempts.append({"provider": provider, "model": model, "error": None, "status": status})
    return Record(
        id=f"req_fill_{i:08d}",
        started_at=started,
        client=client,
        model=model,
        path="/v1/messages",
        stream=rng.random() < 0.9,
        status=status,
        provider=provider,
        upstream_model=model,
        error_type=None if status == 200 else "overloaded_error",
        ttfb_ms=rng.lognormvariate(6.5, 0.5),
        duration_ms=rng.lognormvariate(9, 0.8),
        input_tokens=inp,
        output_tokens=out,
        cache_read_input_tokens=cache_read,
        usage_source=usage_source,
        cost_usd=cost,
        priced=priced,
        dedup_role="leader",
        attempts=tuple(attempts),
        events=out // 3,
        bytes=out * 40,
        instance="sample",
    )


def fill(store: LedgerStore, count: int, *, days: int = 30, seed: int = 1, now: float | None = None) -> None:
    """Write ``count`` records over the ``days`` before ``now`` (default: the present)."""
    rng = random.Random(seed)
    end = time.time() if now is None else now
    for start in range(0, count, BATCH):
        store.write([_record(rng, end, days, i) for i in range(start, min(count, start + BATCH))])
