"""CPU cost of routing one real Claude Code request: its facts, then every route's conditions.

Takes the biggest captured request (tests/data/claude_code 2.1.197/continue-1, 117 KB), parses
it once as the app does, and measures per call (best of 5 runs of N calls each, CPU time):

- ``facts``: ``facts_of`` on the parsed payload (what the app does once per request);
- ``decide``: the decision over 7 routes with every kind of condition, the last one taken;
- ``both``: the two together, the per-request routing cost;
- ``estimate_request``: the full token estimate, for comparison (why facts does not use it).

    python bench/route_cost.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.capture import load_fixtures  # noqa: E402
from tests.matrix import FIXTURES, wire_body  # noqa: E402
from trio_balancer.config import parse_config  # noqa: E402
from trio_balancer.policy.routing import decide  # noqa: E402
from trio_balancer.protocol.request_facts import facts_of  # noqa: E402
from trio_balancer.protocol.tokens import estimate_request  # noqa: E402

ROUTES = [
    {"name": "background", "match": "*haiku*", "when": {"background": True}},
    {"name": "subagent", "match": "*", "when": {"subagent": True}},
    {"name": "long", "match": "*", "when": {"min_input_tokens": 60_000}},
    {"name": "images", "match": "*", "when": {"images": True}},
    {"name": "web", "match": "*", "when": {"server_tools": ["web_search"], "tools": ["Bash"]}},
    {"name": "team", "match": "claude-*", "when": {"client": ["alice"], "header": {"x-team": "core*"}}},
    {"name": "thinking", "match": "*", "when": {"thinking": True, "max_input_tokens": 200_000}},
]


def best_of(calls: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--fixture", default="2.1.197/continue-1")
    args = parser.parse_args()
    fixture = dict(load_fixtures(FIXTURES))[args.fixture]
    raw = wire_body(fixture)
    payload = json.loads(raw)
    headers = [(k.encode(), v.encode()) for k, v in fixture["headers"].items()]
    provider = {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:1", "api_key": "k"}
    routes = [{**r, "targets": [{"provider": "p"}]} for r in ROUTES]
    config = parse_config({"providers": [provider], "routes": routes})
    facts = facts_of(payload, headers, client="bob", body_bytes=len(raw))
    decision = decide(config, facts)
    assert decision is not None and decision.label == "thinking", decision

    def both() -> object:
        return decide(config, facts_of(payload, headers, client="bob", body_bytes=len(raw)))

    print(
        f"{args.fixture}: {len(raw)} bytes, {len(payload['messages'])} messages, {len(payload['tools'])} tools"
    )
    print(f"{len(ROUTES)} routes, taken: {decision.label} ({decision.why})")
    print("| step | us of CPU per call |")
    print("|---|---|")
    print(
        f"| facts | {best_of(args.calls, lambda: facts_of(payload, headers, body_bytes=len(raw))) * 1e6:.1f} |"
    )
    print(f"| decide | {best_of(args.calls, lambda: decide(config, facts)) * 1e6:.1f} |")
    print(f"| both | {best_of(args.calls, both) * 1e6:.1f} |")
    print(
        f"| estimate_request | {best_of(max(1, args.calls // 100), lambda: estimate_request(payload)) * 1e6:.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
