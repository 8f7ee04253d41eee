"""The balancer's CPU against the stack's floor (bench/naive_relay.py), same run: issue 20's
per-event and per-request targets.

Three processes (simulator, balancer, naive relay) on this machine. Rounds alternate which
relay goes first, so drift of the machine's speed falls on both. CPU is read from /proc for
the relay's process only (the simulator and this generator are not counted).

    python bench/hotpath.py events   --rounds 3 --streams 100 --events 200 --eps 20
    python bench/hotpath.py requests --rounds 3 --requests 300 --concurrency 10

``events``: long streams of text deltas; CPU microseconds per relayed SSE event.
``requests``: a real Claude Code request (``--fixture``, the 50 KB 2.1.332 tool loop by
default), each made unique so nothing is shared or cached, answered with 5 deltas as fast as
the simulator sends them; CPU milliseconds per request.

Bounded: rounds x (streams or requests) requests, each stream ``--events`` long.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import loadgen

HOST = "127.0.0.1"


class Relays:
    """The simulator, the balancer and the naive relay, each its own process."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="trio-balancer-hotpath-"))
        self.sim_port, bal_port, naive_port = loadgen.free_port(), loadgen.free_port(), loadgen.free_port()
        self.sim = loadgen.start_simulator(self.sim_port)
        self.procs: dict[str, tuple[loadgen.Proc, int]] = {}
        try:
            balancer = loadgen.start_balancer(bal_port, self.sim_port, self.work)
            self.procs["balancer"] = (balancer, bal_port)
            naive = loadgen.Proc([sys.executable, str(Path(__file__).with_name("naive_relay.py")),
                                  "--port", str(naive_port), "--upstream", f"http://{HOST}:{self.sim_port}"])  # fmt: skip
            self.procs["naive relay"] = (naive, naive_port)
            naive.wait_listening(naive_port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            proc.stop()
        self.sim.stop()


def _order(round_no: int) -> list[str]:
    names = ["balancer", "naive relay"]
    return names if round_no % 2 == 0 else names[::-1]


async def events(relays: Relays, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for _, port in relays.procs.values():  # warm both: connections, imports, caches
        await loadgen.run_load(HOST, port, streams=20, events=5, eps=0, ramp_s=0.2)
    for round_no in range(args.rounds):
        for label in _order(round_no):
            proc, port = relays.procs[label]
            cpu0 = proc.cpu_s()
            result = await loadgen.run_load(
                HOST, port, streams=args.streams, events=args.events, eps=args.eps, ramp_s=args.ramp
            )
            summary = result.summary()
            rows.append({
                "round": round_no + 1, "relay": label, "events": int(summary["events"]),
                "errors": int(summary["errors"]), "p50 ms": summary["p50_ms"], "p99 ms": summary["p99_ms"],
                "cpu us/event": (proc.cpu_s() - cpu0) * 1e6 / max(1, result.events),
            })  # fmt: skip
    return rows


def claude_code_body(fixture: str) -> dict[str, Any]:
    """The captured Claude Code request ``fixture``; ``tiny``: a one-line prompt."""
    if fixture == "tiny":
        return {"model": "claude-opus-4-6", "max_tokens": 1024, "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip
    from tests.e2e.capture import load_fixtures
    from tests.matrix import FIXTURES

    body: dict[str, Any] = dict(load_fixtures(FIXTURES))[fixture]["body"]
    return {**body, "stream": True}


def unique(body: dict[str, Any], n: int) -> dict[str, Any]:
    """``body`` with its last message made unique: no two requests share a flight or a cache."""
    messages = [*body["messages"]]
    if messages[-1]["role"] != "user":
        return {**body, "messages": [*messages, {"role": "user", "content": f"request {n}"}]}
    last = dict(messages[-1])
    content = last["content"]
    text = {"type": "text", "text": f"(request {n})"}
    last["content"] = [*content, text] if isinstance(content, list) else f"{content} (request {n})"
    return {**body, "messages": [*messages[:-1], last]}


async def requests(relays: Relays, args: argparse.Namespace) -> list[dict[str, Any]]:
    body = claude_code_body(args.fixture)
    size = len(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    )  # as Claude Code sends it
    headers = {"x-sim-events": "5", "x-sim-eps": "0", "x-sim-event-bytes": "16"}
    rows = []
    counter = itertools.count()

    async def batch(port: int, total: int) -> tuple[int, int]:
        done = errors = 0
        limiter = trio.CapacityLimiter(args.concurrency)

        async def one() -> None:
            nonlocal done, errors
            async with limiter:
                wire = json.dumps(
                    unique(body, next(counter)), ensure_ascii=False, separators=(",", ":")
                ).encode()
                result = await loadgen.stream_once(HOST, port, wire, headers)
            done += 1
            errors += int(not result.complete or result.status != 200)

        async with trio.open_nursery() as nursery:
            for _ in range(total):
                nursery.start_soon(one)
        return done, errors

    for _, port in relays.procs.values():
        await batch(port, 20)
    for round_no in range(args.rounds):
        for label in _order(round_no):
            proc, port = relays.procs[label]
            cpu0, wall0 = proc.cpu_s(), time.perf_counter()
            done, errors = await batch(port, args.requests)
            rows.append({
                "round": round_no + 1, "relay": label, "requests": done, "errors": errors, "body bytes": size,
                "cpu ms/request": (proc.cpu_s() - cpu0) * 1e3 / max(1, done),
                "requests/s": done / (time.perf_counter() - wall0),
            })  # fmt: skip
    return rows


def ratios(rows: list[dict[str, Any]], column: str) -> str:
    """The median of each relay's column, and balancer / naive."""
    medians = {
        label: statistics.median(r[column] for r in rows if r["relay"] == label)
        for label in ("balancer", "naive relay")
    }
    ratio = medians["balancer"] / medians["naive relay"]
    return (
        f"median {column}: balancer {medians['balancer']:.3g}, naive relay {medians['naive relay']:.3g}; "
        f"ratio {ratio:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["events", "requests"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--eps", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=3.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--fixture", default="2.1.332/tools-2")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default="", help="a line of context for RESULTS.md (e.g. the commit)")
    args = parser.parse_args()
    relays = Relays()
    try:
        rows = trio.run(events if args.scenario == "events" else requests, relays, args)
    finally:
        relays.stop()
    column = "cpu us/event" if args.scenario == "events" else "cpu ms/request"
    table = loadgen.md_table(rows, list(rows[0]))
    summary = ratios(rows, column)
    print(table)
    print(summary)
    if not args.no_record:
        notes = [summary] + ([args.note] if args.note else [])
        loadgen.append_results(
            f"hotpath {args.scenario}", "python bench/hotpath.py " + " ".join(sys.argv[1:]), table, notes
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
