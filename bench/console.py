"""The console on a ~100k-record ledger (issue 19): server time per page, and each query's plan.

Writes a sample ledger (``trio_balancer.ledger.sample``: 30 days of a team's traffic), serves it
with ``trio-balancer serve`` on 127.0.0.1, and asks each console page ``--repeats`` times with
one client, one request at a time; the time is from the request to the last byte on loopback
(the server's time, plus a fraction of a millisecond of HTTP). Then ``EXPLAIN QUERY PLAN`` of
each query the pages run, on the same file. With ``--pg URL`` the plans (and the times of the
queries, run directly) are also taken on PostgreSQL, into which the same records are copied.

    PYTHONPATH=$PWD .venv/bin/python bench/console.py [--count 100000] [--repeats 15] [--pg URL|temp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from trio_balancer.ledger.queries import RecordFilter, browse_sql, series_sql
from trio_balancer.ledger.record import COLUMNS
from trio_balancer.ledger.sample import fill
from trio_balancer.ledger.store import LedgerStore, open_store

PAGES = [
    "/console",
    "/console?range=48h&by=model",
    "/console?range=30d&by=provider",
    "/console/requests",
    "/console/requests?client=bob&status=error",
    "/console/requests?provider=vertex&flagged=1",
    "/console/requests/req_fill_00004242",
    "/console/health",
]
CONFIG = """
[server]
port = {port}
budget_timezone = "Europe/Berlin"
[[server.client_keys]]
name = "alice"
sha256 = "{zeros}"
budget_usd = {{ day = 20, month = 300 }}
[ledger]
url = "sqlite:///{db}"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-bench"
"""


def queries(store: LedgerStore) -> list[tuple[str, str, list[object]]]:
    now = time.time()
    month = RecordFilter(since=now - 30 * 86400, until=now + 3600)
    out: list[tuple[str, str, list[object]]] = []
    for group in (None, "client"):
        sql, args = series_sql(month, width_s=86400, offsets=[(now - 20 * 86400, 7200), (None, 3600)],
                               group=group, mark=store.placeholder, floor_div=store.floor_div)  # fmt: skip
        out.append((f"series 30 days by {group or 'nothing'}", sql, args))
    for name, f in (
        ("page newest", RecordFilter()),
        ("page key=bob status=error", RecordFilter(client="bob", status="error")),
        ("page provider=vertex flagged", RecordFilter(provider="vertex", flagged=True)),
        ("page model, since a day", RecordFilter(model="claude-opus-4-6", since=now - 86400)),
    ):
        sql, args = browse_sql(f, columns=COLUMNS, before=None, limit=51, mark=store.placeholder)
        out.append((name, sql, args))
    return out


def plans(store: LedgerStore, label: str) -> None:
    print(f"\n## query plans ({label}, {store.count():,} records)\n")
    for name, sql, args in queries(store):
        start = time.perf_counter()
        store._execute(sql, args).fetchall()
        ms = (time.perf_counter() - start) * 1000
        print(f"- {name} ({ms:.1f} ms):")
        for line in store.plan(sql, args):
            print(f"    {line}")


def serve_and_time(db: Path, repeats: int) -> None:
    port = 18931
    config = Path(tempfile.mkdtemp()) / "console.toml"
    config.write_text(CONFIG.format(port=port, zeros="0" * 64, db=db))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as client:
            for _ in range(100):  # bounded: the server is up within a few seconds
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            print(f"\n## page times ({repeats} each, ms from request to last byte)\n")
            print("| page | median | max | bytes |\n|---|---|---|---|")
            for page in PAGES:
                times, size = [], 0
                for _ in range(repeats):
                    start = time.perf_counter()
                    r = client.get(page)
                    times.append((time.perf_counter() - start) * 1000)
                    size = len(r.content)
                    assert r.status_code == 200, (page, r.status_code)
                print(f"| `{page}` | {statistics.median(times):.0f} | {max(times):.0f} | {size:,} |")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--pg", help="a PostgreSQL URL to write the records into and plan there; 'temp': a throwaway server"
    )
    args = parser.parse_args()
    db = Path(tempfile.mkdtemp()) / "ledger.sqlite3"
    store = open_store(f"sqlite:///{db}")
    start = time.perf_counter()
    fill(store, args.count)
    print(f"wrote {args.count:,} records (with their rollup) in {time.perf_counter() - start:.1f} s")
    plans(store, "SQLite")
    store.close()
    serve_and_time(db, args.repeats)
    if args.pg:
        server = None
        if args.pg == "temp":  # the test suite's throwaway server (tests/cluster/servers.py)
            from tests.cluster.servers import PgServer

            server = PgServer()
        pg = open_store(server.url if server else args.pg)
        try:
            fill(pg, args.count)
            pg._execute("ANALYZE")
            plans(pg, "PostgreSQL")
        finally:
            pg.close()
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
