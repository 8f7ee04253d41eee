"""CPU cost of making one real Claude Code request fit each provider preset (``upstream/fit.py``).

Replays the captured 2.1.332 tool-loop request (tests/data/claude_code) through ``fit_request``
for every preset, with a signature book that knows its thinking, and prints microseconds per
call (best of 5 runs of N calls each). Bounded: 5 x N calls per preset.

    python bench/fit_cost.py [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.capture import load_fixtures  # noqa: E402
from tests.matrix import FIXTURES, provider_row, wire_body  # noqa: E402
from trio_balancer.config import parse_config  # noqa: E402
from trio_balancer.config.capabilities import PRESETS  # noqa: E402
from trio_balancer.protocol.features import needs_of  # noqa: E402
from trio_balancer.protocol.thinking import SignatureBook, signatures_in  # noqa: E402
from trio_balancer.upstream.fit import fit_request  # noqa: E402
from trio_balancer.upstream.request import UpstreamRequest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fixture", default="2.1.332/tools-2")
    args = parser.parse_args()
    fixture = dict(load_fixtures(FIXTURES))[args.fixture]
    body, raw = fixture["body"], wire_body(fixture)
    headers = tuple((k.encode(), v.encode()) for k, v in fixture["headers"].items())
    request = UpstreamRequest(
        path="/v1/messages", query=b"", headers=headers, body=raw, payload=json.loads(raw),
        model=body["model"], stream=True, needs=needs_of(body),
    )  # fmt: skip
    book = SignatureBook()
    for signature in signatures_in(request.payload):
        book.remember(signature, "anthropic")
    print(
        f"{args.fixture}: {len(raw)} bytes, {len(body['messages'])} messages, {len(body.get('tools', []))} tools"
    )
    print("| preset | us per fit | body changed |")
    print("|---|---|---|")
    for preset in PRESETS:
        provider = parse_config({"providers": [provider_row(preset, "http://127.0.0.1:1")]}).providers[0]
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(args.calls):
                fitted = fit_request(provider, request, request.model, thinking=book)
            best = min(best, (time.perf_counter() - start) / args.calls)
        print(f"| {preset} | {best * 1e6:.0f} | {'no' if fitted.body == raw else 'yes'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
