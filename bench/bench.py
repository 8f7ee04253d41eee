"""Benchmarks: latency and throughput of the balancer, measured against the direct path.

Each scenario is one command; each prints a table and appends it to bench/RESULTS.md with the
machine, versions, command and date:

    python bench/bench.py latency   --streams 1,100,500,1000 --eps 20 --events 100
    python bench/bench.py peak      --eps 50 --events 100
    python bench/bench.py memory    --streams 1000
    python bench/bench.py fanout    --listeners 100
    python bench/bench.py openai    --streams 100
    python bench/bench.py latency   --peer http://127.0.0.1:4000   # any other proxy, same scenario

The simulator, the balancer and this load generator are three processes on the same machine;
the direct path (generator -> simulator) runs in the same invocation, so "added" numbers are
the balancer's cost under the same conditions. ``--plot`` writes bench/latency.png (needs
matplotlib: ``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

HOST = "127.0.0.1"


class Rig:
    """Simulator + balancer (+ the naive relay) processes for one benchmark run."""

    def __init__(self, kind: str = "anthropic", extra: str = "", naive: bool = False) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="trio-balancer-bench-"))
        self.sim_port, self.bal_port = loadgen.free_port(), loadgen.free_port()
        self.sim = loadgen.start_simulator(self.sim_port)
        self.bal = loadgen.start_balancer(self.bal_port, self.sim_port, self.work, kind=kind, extra=extra)
        self.naive: loadgen.Proc | None = None
        if naive:
            self.naive_port = loadgen.free_port()
            self.naive = loadgen.Proc([sys.executable, str(Path(__file__).with_name("naive_relay.py")), "--port", str(self.naive_port),
                                       "--upstream", f"http://{HOST}:{self.sim_port}"])  # fmt: skip
            self.naive.wait_listening(self.naive_port)

    def stop(self) -> None:
        self.bal.stop()
        if self.naive is not None:
            self.naive.stop()
        self.sim.stop()


async def warm(port: int, n: int = 20) -> None:
    await loadgen.run_load(HOST, port, streams=n, events=5, eps=0, ramp_s=0.2)


def row(
    label: str, streams: int, direct: dict[str, float], through: dict[str, float], cpu_us: float | None
) -> dict[str, Any]:
    return {
        "path": label,
        "streams": streams,
        "events": int(through["events"]),
        "errors": int(through["errors"]),
        "direct p50": direct["p50_ms"],
        "direct p99": direct["p99_ms"],
        "via p50": through["p50_ms"],
        "via p99": through["p99_ms"],
        "via max": through["max_ms"],
        "added p50": through["p50_ms"] - direct["p50_ms"],
        "added p99": through["p99_ms"] - direct["p99_ms"],
        "added ttfb p50": through["ttfb_p50_ms"] - direct["ttfb_p50_ms"],
        "added ttfb p99": through["ttfb_p99_ms"] - direct["ttfb_p99_ms"],
        "cpu us/event": cpu_us if cpu_us is not None else float("nan"),
        "gen us/event": through["client_us_per_event"],
    }


async def measure(
    rig: Rig, label: str, streams: int, args: argparse.Namespace
) -> tuple[dict[str, Any], loadgen.LoadResult, loadgen.LoadResult]:
    """The same load direct to the simulator, then through the balancer: (row, direct, through)."""
    direct = await loadgen.run_load(
        HOST, rig.sim_port, streams=streams, events=args.events, eps=args.eps, ramp_s=args.ramp
    )
    cpu0 = rig.bal.cpu_s()
    through = await loadgen.run_load(
        HOST, rig.bal_port, streams=streams, events=args.events, eps=args.eps, ramp_s=args.ramp
    )
    cpu_us = (rig.bal.cpu_s() - cpu0) * 1e6 / max(1, through.events)
    return row(label, streams, direct.summary(), through.summary(), cpu_us), direct, through


COLUMNS = ["path", "streams", "events", "errors", "direct p50", "direct p99", "via p50", "via p99", "via max",
           "added p50", "added p99", "added ttfb p50", "added ttfb p99", "cpu us/event", "gen us/event"]  # fmt: skip


async def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    rig = Rig(naive=args.naive)
    peer = urlparse(args.peer) if args.peer else None
    try:
        await warm(rig.bal_port)
        for streams in [int(s) for s in args.streams.split(",")]:
            r, direct, _ = await measure(rig, "balancer", streams, args)
            rows.append(r)
            if rig.naive is not None:
                cpu0 = rig.naive.cpu_s()
                naive = await loadgen.run_load(
                    HOST, rig.naive_port, streams=streams, events=args.events, eps=args.eps, ramp_s=args.ramp
                )
                rows.append(
                    row(
                        "naive relay",
                        streams,
                        direct.summary(),
                        naive.summary(),
                        (rig.naive.cpu_s() - cpu0) * 1e6 / max(1, naive.events),
                    )
                )
            if peer is not None:
                assert peer.hostname is not None and peer.port is not None
                other = await loadgen.run_load(
                    peer.hostname,
                    peer.port,
                    streams=streams,
                    events=args.events,
                    eps=args.eps,
                    ramp_s=args.ramp,
                )
                rows.append(row(f"peer {args.peer}", streams, direct.summary(), other.summary(), None))
            print(loadgen.md_table(rows[-1:], COLUMNS), flush=True)
    finally:
        rig.stop()
    return rows


async def peak(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Raise the load until the added p99 passes 10 ms; the last rate under it is the peak."""
    rows = []
    rig = Rig()
    try:
        await warm(rig.bal_port)
        for streams in [int(s) for s in args.streams.split(",")]:
            r, _, through = await measure(rig, "balancer", streams, args)
            r["events/s"] = through.summary()["events_per_s"]
            rows.append(r)
            print(loadgen.md_table(rows[-1:], [*COLUMNS, "events/s"]), flush=True)
            if r["added p99"] > 10:
                break
    finally:
        rig.stop()
    return rows


async def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """RSS of the balancer as slow streams pile up: the slope is the memory per open stream."""
    rows = []
    rig = Rig()
    try:
        await warm(rig.bal_port)
        headers = {"x-sim-events": "1000", "x-sim-eps": "0.5", "x-balancer-no-dedup": "1"}
        steps = [int(args.streams * k / 4) for k in range(5)]
        base = rig.bal.rss_kib()
        rows.append({"open streams": 0, "rss_kib": base, "kib per stream": float("nan")})
        async with trio.open_nursery() as nursery:
            opened = 0
            for target in steps[1:]:
                while opened < target:
                    body = {
                        "model": "claude-opus-4-6",
                        "max_tokens": 9,
                        "stream": True,
                        "messages": [{"role": "user", "content": f"m{opened}"}],
                    }
                    nursery.start_soon(loadgen.stream_once, HOST, rig.bal_port, body, headers)
                    opened += 1
                    if opened % 50 == 0:
                        await trio.sleep(0.05)
                await trio.sleep(3)
                rss = rig.bal.rss_kib()
                rows.append({"open streams": target, "rss_kib": rss, "kib per stream": (rss - base) / target})
                print(rows[-1], flush=True)
            nursery.cancel_scope.cancel()
    finally:
        rig.stop()
    return rows


async def fanout(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One upstream stream to N listeners (identical requests, shared by dedup)."""
    rig = Rig()
    try:
        await warm(rig.bal_port)
        headers = {"x-sim-stamp": "1", "x-sim-events": str(args.events), "x-sim-eps": f"{args.eps:g}"}
        body = {
            "model": "claude-opus-4-6",
            "max_tokens": 99,
            "stream": True,
            "messages": [{"role": "user", "content": "shared"}],
        }
        before = rig.sim_requests()
        results: list[loadgen.StreamResult] = []

        async def one() -> None:
            results.append(await loadgen.stream_once(HOST, rig.bal_port, body, headers))

        cpu0 = rig.bal.cpu_s()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(args.listeners):
                nursery.start_soon(one)
        wall = time.perf_counter() - started
        await trio.sleep(0.5)  # the ledger writes in batches of up to 100 ms
        load = loadgen.LoadResult(args.listeners, results, wall)
        s = load.summary()
        upstream = rig.sim_requests() - before
        return [{"listeners": args.listeners, "upstream requests": upstream, "events delivered": int(s["events"]), "errors": int(s["errors"]),
                 "p50 ms": s["p50_ms"], "p99 ms": s["p99_ms"], "max ms": s["max_ms"],
                 "cpu us/delivered event": (rig.bal.cpu_s() - cpu0) * 1e6 / max(1, s["events"])}]  # fmt: skip
    finally:
        rig.stop()


async def openai(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU per event with OpenAI conversion vs Anthropic passthrough, same load."""
    rows = []
    # An OpenAI provider gets headers of its own kind, not the client's, so the simulator's
    # x-sim-* settings travel in the provider's configured headers for both kinds alike.
    sim_headers = (
        f'headers = {{ "x-sim-stamp" = "1", "x-sim-events" = "{args.events}", "x-sim-eps" = "{args.eps:g}" }}'
    )
    for kind in ("anthropic", "openai"):
        rig = Rig(kind=kind, extra=sim_headers)
        try:
            await warm(rig.bal_port)
            r, _, _ = await measure(rig, kind, args.streams, args)
            rows.append(r)
            print(loadgen.md_table(rows[-1:], COLUMNS), flush=True)
        finally:
            rig.stop()
    return rows


def _sim_requests(self: Rig) -> int:
    # The simulator has no metrics endpoint; count what reached it through the balancer's ledger.
    r = httpx.get(f"http://{HOST}:{self.bal_port}/usage", params={"group_by": "dedup_role"}, timeout=10)
    return sum(t["requests"] for t in r.json()["totals"] if t["dedup_role"] in ("leader", "off"))


Rig.sim_requests = _sim_requests  # type: ignore[attr-defined]


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == label]
        xs = [r["streams"] for r in mine]
        ax.plot(xs, [r["via p50"] for r in mine], marker="o", label=f"{label} p50")
        ax.plot(xs, [r["via p99"] for r in mine], marker="o", linestyle="--", label=f"{label} p99")
    direct = [r for r in rows if r["path"] == "balancer"]
    ax.plot(
        [r["streams"] for r in direct],
        [r["direct p50"] for r in direct],
        marker="s",
        color="grey",
        label="direct p50",
    )
    ax.plot(
        [r["streams"] for r in direct],
        [r["direct p99"] for r in direct],
        marker="s",
        color="grey",
        linestyle="--",
        label="direct p99",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("one-way latency per event (ms)")
    ax.set_title("Event latency: simulator -> client, direct vs through trio-balancer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path.name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["latency", "peak", "memory", "fanout", "openai"])
    parser.add_argument("--streams", default="1,100,500,1000")
    parser.add_argument("--eps", type=float, default=20.0)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which streams start")
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--peer", help="another proxy's base URL, measured with the same load")
    parser.add_argument(
        "--naive", action="store_true", help="also measure bench/naive_relay.py (the stack's floor)"
    )
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.scenario == "memory":
        args.streams = int(args.streams.split(",")[-1])
    if args.scenario in ("openai",):
        args.streams = int(args.streams.split(",")[0]) if "," in str(args.streams) else int(args.streams)
    rows = trio.run(
        {"latency": latency, "peak": peak, "memory": memory, "fanout": fanout, "openai": openai}[
            args.scenario
        ],
        args,
    )
    columns = list(rows[0]) if rows else []
    table = loadgen.md_table(rows, columns)
    print(table)
    notes = [json.dumps(vars(args))]
    if args.plot and args.scenario == "latency":
        notes.append(plot(rows, Path(__file__).resolve().parent / "latency.png"))
    if not args.no_record:
        loadgen.append_results(f"{args.scenario}", " ".join(["python", *sys.argv]), table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
