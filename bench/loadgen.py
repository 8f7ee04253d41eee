"""Load generator and process helpers shared by the benchmark and soak scenarios.

Clients are raw trio sockets speaking HTTP/1.1 through h11, decoding SSE with the balancer's own
sans-I/O decoder: a few microseconds per event, so the generator measures the balancer rather
than itself (its own cost per event is measured and reported: ``client_us_per_event``).

One-way latency per event: the simulator stamps each text delta with ``time.time_ns()`` when it
sends it (``x-sim-stamp: 1``); the generator subtracts that from the wall clock when the event
is complete. Sender and receiver share the machine's clock, so the difference is exact to the
clock's resolution. "Added latency" is the same measurement through the balancer minus direct
to the simulator, in the same run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import h11
import trio

from trio_balancer.protocol.sse import SSEDecoder

ROOT = Path(__file__).resolve().parent.parent
# Compact JSON (ours, the simulator's) or with spaces after the colons (LiteLLM's json.dumps).
STAMP = re.compile(rb'"text":\s*"(\d{19}) ')


@attrs.define
class StreamResult:
    status: int = 0
    ttfb_s: float = 0.0  # request sent -> response headers
    first_event_s: float = 0.0  # request sent -> first complete event
    first_delta_s: float = 0.0  # request sent -> first content_block_delta (TTFT)
    latencies_ns: list[int] = attrs.Factory(list)  # per stamped event: received - sent
    events: int = 0
    bytes: int = 0
    complete: bool = False
    error: str | None = None
    client_ns: int = 0  # time spent in the generator's own parsing


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def stream_once(
    host: str,
    port: int,
    body: dict[str, Any] | bytes,
    headers: dict[str, str],
    *,
    stop_after_events: int | None = None,
) -> StreamResult:
    """POST /v1/messages and read the SSE response to the end (or ``stop_after_events``).

    ``body`` as bytes is sent as it is (a real client's compact UTF-8 JSON)."""
    result = StreamResult()
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = h11.Connection(h11.CLIENT)
    hdrs = [("host", f"{host}:{port}"), ("content-type", "application/json"), ("content-length", str(len(payload))),
            ("anthropic-version", "2023-06-01"), ("x-api-key", "bench"), *headers.items()]  # fmt: skip
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    async with stream:
        started = time.perf_counter()
        await stream.send_all(
            conn.send(h11.Request(method="POST", target="/v1/messages", headers=hdrs))
            + conn.send(h11.Data(data=payload))
            + conn.send(h11.EndOfMessage())
        )
        decoder = SSEDecoder()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    result.error = result.error or "connection closed"
                    return result
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                result.status = event.status_code
                result.ttfb_s = time.perf_counter() - started
            elif isinstance(event, h11.Data):
                now_ns = time.time_ns()
                t0 = time.perf_counter_ns()
                result.bytes += len(event.data)
                for ev in decoder.feed(bytes(event.data)):
                    if ev.data is None:
                        continue
                    if not result.events:
                        result.first_event_s = time.perf_counter() - started
                    result.events += 1
                    if ev.event == "content_block_delta":
                        if not result.first_delta_s:
                            result.first_delta_s = time.perf_counter() - started
                        m = STAMP.search(ev.data)
                        if m:
                            result.latencies_ns.append(now_ns - int(m.group(1)))
                    elif ev.event == "message_stop":
                        result.complete = True
                    elif ev.event == "error":
                        result.error = "error event"
                result.client_ns += time.perf_counter_ns() - t0
                if stop_after_events is not None and result.events >= stop_after_events:
                    return result
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return result


@attrs.define
class LoadResult:
    streams: int
    results: list[StreamResult]
    wall_s: float

    @property
    def latencies_ms(self) -> list[float]:
        return [ns / 1e6 for r in self.results for ns in r.latencies_ns]

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if not r.complete or r.status != 200)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.results)

    def summary(self) -> dict[str, float]:
        lat = self.latencies_ms
        ttfb = [r.ttfb_s * 1000 for r in self.results if r.status]
        client_ns = sum(r.client_ns for r in self.results)
        return {
            "streams": self.streams,
            "errors": self.errors,
            "events": self.events,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else float("nan"),
            "ttfb_p50_ms": percentile(ttfb, 50),
            "ttfb_p99_ms": percentile(ttfb, 99),
            "events_per_s": self.events / self.wall_s if self.wall_s else 0.0,
            "client_us_per_event": client_ns / 1000 / max(1, self.events),
        }


async def run_load(
    host: str, port: int, *, streams: int, events: int, eps: float, event_bytes: int = 16,
    ramp_s: float = 1.0, extra_headers: dict[str, str] | None = None, model: str = "claude-opus-4-6",
) -> LoadResult:  # fmt: skip
    """``streams`` concurrent stamped streams of ``events`` text deltas at ``eps`` each."""
    headers = {"x-sim-stamp": "1", "x-sim-events": str(events), "x-sim-eps": f"{eps:g}",
               "x-sim-event-bytes": str(event_bytes), "x-balancer-no-dedup": "1", **(extra_headers or {})}  # fmt: skip
    results: list[StreamResult] = []

    async def one(i: int) -> None:
        await trio.sleep(ramp_s * i / max(1, streams))  # spread the starts: no synchronized bursts
        body = {
            "model": model,
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": f"bench {i}"}],
        }
        results.append(await stream_once(host, port, body, headers))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
    return LoadResult(streams, results, time.perf_counter() - started)


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process (simulator or balancer) and what /proc says about it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        # stderr to a file, never an unread pipe: a full pipe blocks the child's log writes,
        # and with them its whole event loop.
        self.log = Path(tempfile.mkstemp(prefix="trio-balancer-bench-", suffix=".log")[1])
        with self.log.open("wb") as err:
            self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env)
        self.pid = self.popen.pid

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"process exited: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise TimeoutError(f"nothing listening on {port}")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sockets(self, served_port: int) -> dict[str, int]:
        """This process's TCP sockets by role: ``clients`` (accepted on ``served_port``),
        ``upstream`` (connections it opened), ``listening``; and ``other_fds`` (files, pipes).

        Read from /proc (socket inodes of the fds matched to /proc/net/tcp*), so it needs no
        tool: a leak of client connections shows apart from the upstream pool's idle ones.
        """
        inodes = set()
        other = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
            else:
                other += 1
        counts = {"clients": 0, "upstream": 0, "listening": 0, "other_fds": other}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A":  # LISTEN
                    counts["listening"] += 1
                elif local_port == served_port:
                    counts["clients"] += 1
                else:
                    counts["upstream"] += 1
        return counts

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_simulator(port: int) -> Proc:
    proc = Proc([sys.executable, "-m", "trio_balancer", "simulate", "--port", str(port)])
    proc.wait_listening(port)
    return proc


def start_balancer(
    port: int,
    upstream_port: int,
    workdir: Path,
    *,
    extra: str = "",
    kind: str = "anthropic",
    workers: int = 1,
) -> Proc:
    """``workers`` > 1: ``serve --workers N``, a parent and N serving processes on the port."""
    base = f"http://127.0.0.1:{upstream_port}" + ("/v1" if kind == "openai" else "")
    config = workdir / f"balancer-{port}.toml"
    config.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}
max_concurrent = 10000

[ledger]
url = "sqlite:///{workdir}/ledger-{port}.sqlite3"

[[providers]]
name = "sim"
kind = "{kind}"
base_url = "{base}"
api_key = "sk-bench"
max_connections = 4000
max_keepalive = 2000
{extra}
"""
    )
    args = [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--log-level", "warning"]
    proc = Proc(args + (["--workers", str(workers)] if workers != 1 else []))
    proc.wait_listening(port)
    return proc


def machine() -> dict[str, str]:
    import platform

    import httpx as _httpx
    import hypercorn as _hypercorn

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "python": platform.python_version(),
        "trio": trio.__version__,
        "hypercorn": getattr(_hypercorn, "__version__", "0.18"),
        "httpx": _httpx.__version__,
    }


def append_results(title: str, command: str, table: str, notes: Iterable[str] = ()) -> None:
    m = machine()
    block = [f"\n## {title}\n", f"- date: {m['date']}", f"- machine: {m['cpu']}; Python {m['python']}, trio {m['trio']}, hypercorn {m['hypercorn']}, httpx {m['httpx']}",
             f"- command: `{command}`", "", table, ""]  # fmt: skip
    block += [f"- {n}" for n in notes]
    with (ROOT / "bench" / "RESULTS.md").open("a") as f:
        f.write("\n".join(block) + "\n")


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def mean(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.fmean(vals) if vals else float("nan")
