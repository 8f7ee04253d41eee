"""Soak: a few hundred streams with faults mixed in, for a set time; RSS, fds and tasks must end flat.

    python bench/soak.py --duration 600 --streams 300 --record      # by hand, recorded in RESULTS.md
    python bench/soak.py --duration 15 --streams 60                 # what CI runs (tests/test_soak.py)

The balancer and the simulator run as separate processes; this one is the load. Every client
loops until the deadline (and at most --max-requests in all), each request picking a fault at
random: the upstream cuts, resets, stalls, sends an error event or a 529, or the client leaves
early. Every few seconds it samples the balancer's RSS, open file descriptors, and the task and
flight counts from /status.json. After the load it waits for the balancer to go idle and checks:
tasks and flights back to their idle values, no client connection left open (a connection the
client closed must be closed at once, not at the keep-alive timeout), upstream sockets within the
provider's keep-alive pool, other descriptors back to their start, RSS no longer growing
(the second half of the run's samples may not exceed the first half's peak by more than 10 %).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

MAX_KEEPALIVE = 50  # the provider's default max_keepalive

FAULTS = [
    ({}, None),  # healthy
    ({}, None),
    ({}, None),
    ({"x-sim-cut-after": "4"}, None),
    ({"x-sim-reset-after": "4"}, None),
    ({"x-sim-stall-after": "3"}, None),
    ({"x-sim-error-after": "5"}, None),
    ({"x-sim-status": "529", "x-sim-retry-after": "0"}, None),
    ({}, 3),  # the client leaves after 3 events
    ({"x-sim-no-usage": "1"}, None),
]


async def soak(duration: float, streams: int, max_requests: int, interval: float) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="trio-balancer-soak-"))
    sim_port, bal_port = loadgen.free_port(), loadgen.free_port()
    sim = loadgen.start_simulator(sim_port)
    extra = "keepalive_s = 1\ntimeouts = { idle = 2, first_byte = 5 }\n\n[health]\nbase_cooldown_s = 0.05\nmax_cooldown_s = 0.2\n"
    bal = loadgen.start_balancer(bal_port, sim_port, work, extra=extra)
    samples: list[dict[str, float]] = []
    counts = {"requests": 0, "complete": 0, "errors": 0}
    rng = random.Random(2026)

    async def status(client: httpx.AsyncClient) -> dict[str, object]:
        data: dict[str, object] = (await client.get(f"http://127.0.0.1:{bal_port}/status.json")).json()
        return data

    async def sample(client: httpx.AsyncClient, t0: float) -> None:
        s = await status(client)
        socks = bal.sockets(bal_port)
        samples.append({"t": round(time.monotonic() - t0, 1), "rss_mib": bal.rss_kib() / 1024, "fds": bal.fds(),
                        "clients": socks["clients"], "upstream": socks["upstream"], "other_fds": socks["other_fds"],
                        "tasks": float(s["tasks"]), "flights": float(len(s["live_streams"]))})  # type: ignore[arg-type]  # fmt: skip

    async def worker(i: int, deadline: float) -> None:
        while time.monotonic() < deadline and counts["requests"] < max_requests:
            counts["requests"] += 1
            headers, leave = rng.choice(FAULTS)
            headers = {"x-sim-events": "12", "x-sim-eps": "40", "x-balancer-no-dedup": "1", **headers}
            body = {
                "model": "claude-opus-4-6",
                "max_tokens": 64,
                "stream": True,
                "messages": [{"role": "user", "content": f"soak {i}"}],
            }
            with trio.move_on_after(30):
                r = await loadgen.stream_once("127.0.0.1", bal_port, body, headers, stop_after_events=leave)
                counts["complete" if r.complete else "errors"] += 1

    try:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            t0 = time.monotonic()
            await sample(client, t0)
            idle_tasks = samples[0]["tasks"]
            deadline = t0 + duration
            async with trio.open_nursery() as nursery:
                for i in range(streams):
                    nursery.start_soon(worker, i, deadline)

                async def sampler() -> None:
                    while time.monotonic() < deadline:
                        await trio.sleep(interval)
                        await sample(client, t0)

                nursery.start_soon(sampler)
            with trio.fail_after(30):  # everything in flight ends
                while True:
                    s = await status(client)
                    if not s["live_streams"]:
                        break
                    await trio.sleep(0.2)
            await trio.sleep(2.5)  # past the pool's keep-alive expiry (1 s): idle upstream sockets close
            await sample(client, t0)
    finally:
        bal.stop()
        sim.stop()
    under_load = samples[1:-1] or samples
    half = len(under_load) // 2
    first_peak = max(s["rss_mib"] for s in under_load[: max(1, half)])
    second_peak = max(s["rss_mib"] for s in under_load[half:])
    end = samples[-1]
    checks = {
        "tasks back to idle": end["tasks"] == idle_tasks,
        "no flights left": end["flights"] == 0,
        # The sampler's own keep-alive connection is the one client socket allowed.
        "no client connection left open": end["clients"] <= 1,
        # Idle pooled connections to the simulator stay until reused (httpx has no reaper),
        # bounded by the provider's keep-alive pool; everything else must be back.
        "upstream sockets within the keep-alive pool": end["upstream"] <= MAX_KEEPALIVE,
        "other fds back to start": end["other_fds"] <= samples[0]["other_fds"] + 2,
        "RSS flat (second half <= 1.1 x first half peak)": second_peak <= first_peak * 1.10,
    }
    return {
        "samples": samples,
        "counts": counts,
        "checks": checks,
        "first_peak": first_peak,
        "second_peak": second_peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    result = trio.run(soak, args.duration, args.streams, args.max_requests, args.interval)
    samples = result["samples"]  # type: ignore[assignment]
    columns = ["t", "rss_mib", "fds", "clients", "upstream", "other_fds", "tasks", "flights"]
    table = loadgen.md_table(samples, columns)  # type: ignore[arg-type]
    print(table)
    print(json.dumps({"counts": result["counts"], "checks": result["checks"]}, indent=1))
    ok = all(result["checks"].values())  # type: ignore[attr-defined]
    if args.record:
        loadgen.append_results(
            f"Soak: {args.streams} streams with faults for {args.duration:g} s",
            " ".join(["python", *sys.argv]),
            table,
            [
                f"requests: {result['counts']}",
                f"checks: {result['checks']}",
                f"RSS peak first half {result['first_peak']:.1f} MiB, second half {result['second_peak']:.1f} MiB",
            ],
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
