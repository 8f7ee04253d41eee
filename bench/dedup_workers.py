"""How often identical concurrent requests share one upstream stream with ``--workers N``.

A flight is shared within its process only: each worker that receives one of a burst of
identical requests leads one upstream stream of its own. The kernel spreads connections over
the workers (SO_REUSEPORT hashes each connection), so a burst of L identical requests costs as
many upstream streams as distinct workers it reached, at most min(N, L). This measures it:
bursts of L identical requests, each client on its own connection, all sent at once; the
upstream streams are counted from the ledger (leaders and unshared requests).

    python bench/dedup_workers.py --workers 1,2 --listeners 2,10,100 --bursts 20

Bounded: workers x listeners x bursts requests, each a short stream.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

HOST = "127.0.0.1"


def ledger_counts(port: int) -> tuple[int, int]:
    """(every request recorded, those that reached the simulator), from the shared ledger."""
    r = httpx.get(f"http://{HOST}:{port}/usage", params={"group_by": "dedup_role"}, timeout=10)
    totals = r.json()["totals"]
    upstream = sum(t["requests"] for t in totals if t["dedup_role"] in ("leader", "off"))
    return sum(t["requests"] for t in totals), upstream


async def recorded(port: int, at_least: int) -> int:
    """The upstream count once the ledger holds ``at_least`` records (it writes in batches);
    waits at most 5 s."""
    for _ in range(50):
        total, upstream = ledger_counts(port)
        if total >= at_least:
            return upstream
        await trio.sleep(0.1)
    raise TimeoutError(f"the ledger holds {total} records, not {at_least}")


async def burst(port: int, listeners: int, tag: str) -> int:
    """``listeners`` identical requests at once; returns how many completed."""
    body = {"model": "claude-opus-4-6", "max_tokens": 99, "stream": True,
            "messages": [{"role": "user", "content": f"shared {tag}"}]}  # fmt: skip
    headers = {"x-sim-events": "20", "x-sim-eps": "50"}  # 0.4 s: everyone arrives while it streams
    done = 0

    async def one() -> None:
        nonlocal done
        result = await loadgen.stream_once(HOST, port, body, headers)
        done += int(result.complete and result.status == 200)

    async with trio.open_nursery() as nursery:
        for _ in range(listeners):
            nursery.start_soon(one)
    return done


async def measure(workers: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="trio-balancer-dedup-workers-"))
    sim_port, port = loadgen.free_port(), loadgen.free_port()
    sim = loadgen.start_simulator(sim_port)
    rows = []
    try:
        balancer = loadgen.start_balancer(port, sim_port, work, workers=workers)
        try:
            for listeners in [int(x) for x in args.listeners.split(",")]:
                per_burst, completed = [], 0
                for b in range(args.bursts):
                    total, before = ledger_counts(port)
                    completed += await burst(port, listeners, f"w{workers} l{listeners} b{b}")
                    per_burst.append(await recorded(port, total + listeners) - before)
                rows.append({
                    "workers": workers, "identical requests": listeners, "bursts": args.bursts,
                    "completed": completed, "upstream streams per burst (mean)": statistics.mean(per_burst),
                    "max": max(per_burst), "bursts shared by one stream": sum(1 for n in per_burst if n == 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            balancer.stop()
    finally:
        sim.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--listeners", default="2,10,100")
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for workers in [int(x) for x in args.workers.split(",")]:
        rows += trio.run(measure, workers, args)
    table = loadgen.md_table(rows, list(rows[0]))
    print(table)
    if not args.no_record:
        loadgen.append_results(
            "dedup across workers", "python bench/dedup_workers.py " + " ".join(sys.argv[1:]), table
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
