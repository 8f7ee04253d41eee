"""Peers side by side: trio-balancer, LiteLLM and claude-code-router on one simulator, one run.

    python bench/peers.py install                 # idempotent: bench/.peers/{litellm-venv,ccr}
    python bench/peers.py run                     # 100 streams x 20 deltas at 50 deltas/s each
    python bench/peers.py run --streams 10 --events 10 --only direct,balancer-w2,ccr --no-record

Two scenarios, every path measured in the same invocation against the same simulator process
(started with the load's pace as its defaults, so a proxy that forwards no ``x-sim-*`` header
gets the same stream):

- ``passthrough``: client -> proxy -> the simulator's Anthropic ``/v1/messages``;
- ``openai``: the client still speaks Anthropic ``/v1/messages``; the proxy converts to the
  simulator's OpenAI ``/v1/chat/completions`` and the answer back.

Paths: ``direct`` (to the simulator: the reference every "added" number subtracts, always
measured), ``balancer-w1`` and ``balancer-w2`` (``trio-balancer serve --workers 1|2``),
``litellm`` (``litellm --config config.yaml``, its documented run command, one worker, no
database, no callbacks), ``ccr`` (``ccr serve``: claude-code-router's management service and its
gateway child, config in a private HOME). CPU and RSS are of the whole process tree (parent and
children: the balancer's workers, CCR's gateway). A peer that is not installed or does not start
is reported as n/a, with the reason, instead of failing the run.

Peers live in bench-only directories outside the project's dependencies (``bench/.peers/``,
git-ignored), installed by ``install`` at pinned versions; ``--plot`` writes bench/peers.png with
matplotlib, from this interpreter or else the LiteLLM venv's (installed there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
PEERS = BENCH / ".peers"
LITELLM_VENV = PEERS / "litellm-venv"
CCR_DIR = PEERS / "ccr"
CCR_PKG = CCR_DIR / "node_modules" / "@musistudio" / "claude-code-router"

LITELLM_VERSION = "1.108.7"  # the version issue 20 measured
MATPLOTLIB_VERSION = "3.11.2"
CCR_VERSION = "3.1.1"
# CCR 3.1.1 declares @the-next-ai/ai-gateway and @the-next-ai/bot-gateway-sdk, which the npm
# registry answers 404 for; its dist/ bundles the gateway (next-ai-gateway.js) and looks for
# those packages only as optional overrides. So it is unpacked from its own tarball and given
# its three other dependencies, pinned within its ranges.
CCR_DEPS = ["better-sqlite3@12.11.1", "node-forge@1.4.4", "undici@7.30.2"]
LITELLM_KEY = "sk-bench-0123456789abcdefghijklmnopqrstuv"  # LiteLLM refuses to start without one
CCR_KEY = "bench"  # the x-api-key loadgen sends; CCR checks it (APIKEY)
MODELS = {"passthrough": "sim-a", "openai": "sim-1"}
PATHS = ["direct", "balancer-w1", "balancer-w2", "litellm", "ccr"]
SCENARIOS = ["passthrough", "openai"]


# -- install --------------------------------------------------------------------------------------


def _run(cmd: list[str], **kw: Any) -> None:
    env = kw.pop("env", None)
    shown = " ".join(f"{k}={v}" for k, v in (env or {}).items() if k.startswith("npm_config"))
    print("+", (shown + " " if shown else "") + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=1200, env={**os.environ, **(env or {})}, **kw)


def _rel(path: Path) -> str:
    return str(path.relative_to(BENCH.parent)) if path.is_relative_to(BENCH.parent) else str(path)


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or None


def ccr_version() -> str | None:
    try:
        return str(json.loads((CCR_PKG / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _sqlite_built() -> bool:
    return (
        CCR_DIR / "node_modules" / "better-sqlite3" / "build" / "Release" / "better_sqlite3.node"
    ).exists()


def install(_: argparse.Namespace) -> int:
    PEERS.mkdir(parents=True, exist_ok=True)
    if litellm_version() == LITELLM_VERSION:
        print(f"litellm {LITELLM_VERSION}: present in {_rel(LITELLM_VENV)}")
    else:
        if not (LITELLM_VENV / "bin" / "pip").exists():
            _run([sys.executable, "-m", "venv", str(LITELLM_VENV)])
        pip = str(LITELLM_VENV / "bin" / "pip")
        _run(
            [pip, "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}", f"matplotlib=={MATPLOTLIB_VERSION}"]
        )
    if ccr_version() == CCR_VERSION and _sqlite_built():
        print(f"claude-code-router {CCR_VERSION}: present in {_rel(CCR_DIR)}")
    else:
        CCR_DIR.mkdir(parents=True, exist_ok=True)
        (CCR_DIR / "package.json").write_text('{"name": "ccr-bench", "private": true}\n')
        npm = shutil.which("npm") or "npm"
        # better-sqlite3's prebuilt binary comes from outside the registry: build it from the
        # installed node headers instead.
        env = {"npm_config_build_from_source": "true"}
        if Path("/usr/include/node/node_api.h").exists():
            env["npm_config_nodedir"] = "/usr"
        _run([npm, "install", "--no-audit", "--no-fund", *CCR_DEPS], cwd=CCR_DIR, env=env)
        with tempfile.TemporaryDirectory() as tmp:
            _run(
                [npm, "pack", f"@musistudio/claude-code-router@{CCR_VERSION}", "--pack-destination", tmp],
                cwd=CCR_DIR,
            )
            tgz = next(Path(tmp).glob("*.tgz"))
            print(f"+ unpack {tgz.name} -> {_rel(CCR_PKG)}", flush=True)
            shutil.rmtree(CCR_PKG, ignore_errors=True)
            with tarfile.open(tgz) as tar:
                tar.extractall(tmp, filter="data")
            CCR_PKG.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "package"), CCR_PKG)
    for line in versions():
        print(line)
    return 0


def versions() -> list[str]:
    node = shutil.which("node")
    node_v = (
        subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        if node
        else "absent"
    )
    sqlite = "absent"
    with contextlib.suppress(OSError, ValueError, KeyError):
        sqlite = json.loads((CCR_DIR / "node_modules" / "better-sqlite3" / "package.json").read_text())[
            "version"
        ]
    return [f"litellm {litellm_version() or 'not installed'} (litellm[proxy], venv {_rel(LITELLM_VENV)})",
            f"claude-code-router {ccr_version() or 'not installed'} on node {node_v} (better-sqlite3 {sqlite}, built from source)"]  # fmt: skip


# -- processes -----------------------------------------------------------------------------------


class Group(loadgen.Proc):
    """A child in a process group of its own: ``stop`` ends the group (workers, gateways too)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="trio-balancer-peers-", suffix=".log")[1])
        with self.log.open("wb") as err:
            self.popen = subprocess.Popen(
                args, stdout=err, stderr=err, env=env, cwd=cwd, start_new_session=True
            )
        self.pid = self.popen.pid

    def stop(self) -> None:
        def signal_group(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

        signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(self.pid):
            time.sleep(0.1)
        signal_group(signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc's children lists."""
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def tree_cpu_s(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def stop_tree(proc: loadgen.Proc) -> None:
    """Stop ``proc`` (the balancer drains its workers), then kill whatever of its tree is left."""
    pids = tree(proc.pid)[1:]
    proc.stop()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Target:
    """One path: where the load goes, what it sends, whose process tree pays for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.proc: loadgen.Proc | None = None
        self.headers: dict[str, str] = {}
        self.error: str | None = None  # why this path is n/a
        self.command = ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc)
            self.proc = None


def start_simulator(port: int, args: argparse.Namespace) -> Group:
    # The load's pace as the simulator's defaults: a proxy that drops x-sim-* gets the same stream.
    sim = Group([sys.executable, "-m", "trio_balancer", "simulate", "--port", str(port), "--stamp",
                 "--events", str(args.events), "--eps", f"{args.eps:g}", "--event-bytes", "16"])  # fmt: skip
    sim.wait_listening(port)
    return sim


def start_balancer(t: Target, kind: str, workers: int, sim_port: int, work: Path) -> None:
    t.port = loadgen.free_port()
    t.proc = loadgen.start_balancer(t.port, sim_port, work, kind=kind, workers=workers)
    t.command = f"trio-balancer serve --config balancer.toml --workers {workers}"


def start_litellm(t: Target, sim_port: int, work: Path) -> None:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"not installed ({exe} missing): run `python bench/peers.py install`")
    t.port = loadgen.free_port()
    # Its extras off: no database (no DATABASE_URL), no callbacks, no spend or error logs. For an
    # openai/ model LiteLLM's /v1/messages goes to the Responses API unless told to use
    # chat/completions (the simulator, like most OpenAI-compatible servers, has no /v1/responses).
    config = work / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: {MODELS["passthrough"]}
    litellm_params:
      model: anthropic/{MODELS["passthrough"]}
      api_base: http://{HOST}:{sim_port}
      api_key: sk-sim
  - model_name: {MODELS["openai"]}
    litellm_params:
      model: openai/{MODELS["openai"]}
      api_base: http://{HOST}:{sim_port}/v1
      api_key: sk-sim
litellm_settings:
  use_chat_completions_url_for_anthropic_messages: true
  callbacks: []
  success_callback: []
  failure_callback: []
  turn_off_message_logging: true
  drop_params: true
general_settings:
  master_key: {LITELLM_KEY}
  disable_spend_logs: true
  disable_error_logs: true
""")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_", "LITELLM_"))}
    # No fetch of the model cost map from the internet at start; logs at ERROR only.
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    t.command = f"litellm --config litellm.yaml --host {HOST} --port {t.port}"
    t.proc = Group(
        [str(exe), "--config", str(config), "--host", HOST, "--port", str(t.port)], env=env, cwd=work
    )
    t.proc.wait_listening(t.port, timeout=120)  # uvicorn binds once the proxy has started
    t.headers = {"authorization": f"Bearer {LITELLM_KEY}"}


def start_ccr(t: Target, sim_port: int, work: Path) -> None:
    cli = CCR_PKG / "dist" / "main" / "cli.js"
    node = shutil.which("node")
    if not cli.exists() or node is None:
        raise RuntimeError(f"not installed ({cli} missing or no node): run `python bench/peers.py install`")
    t.port, ui_port = loadgen.free_port(), loadgen.free_port()
    home = work / "ccr-home"
    (home / ".claude-code-router").mkdir(parents=True, exist_ok=True)
    # A legacy config.json: CCR 3 migrates it into its config.sqlite at the first start. One
    # provider per dialect: an Anthropic one (passthrough) and an OpenAI chat one (conversion).
    base = f"http://{HOST}:{sim_port}/v1"
    config = {"HOST": HOST, "PORT": t.port, "APIKEY": CCR_KEY, "LOG": False,
              "gateway": {"enabled": True, "host": HOST, "port": t.port},
              "observability": {"requestLogs": False, "agentAnalysis": False},
              "Providers": [{"name": "sim-anthropic", "api_base_url": f"{base}/messages", "api_key": "sk-sim",
                             "models": [MODELS["passthrough"]], "protocol": "anthropic"},
                            {"name": "sim-openai", "api_base_url": f"{base}/chat/completions", "api_key": "sk-sim",
                             "models": [MODELS["openai"]], "protocol": "openai_chat"}],
              "Router": {"default": f"sim-openai,{MODELS['openai']}"}}  # fmt: skip
    (home / ".claude-code-router" / "config.json").write_text(json.dumps(config, indent=2))
    env = {**os.environ, "HOME": str(home)}
    t.command = f"HOME=<private> ccr serve --no-open --host {HOST} --port {ui_port} (gateway on {t.port})"
    last = ""
    for _attempt in range(2):  # the first start after the migration sometimes loses its gateway child
        t.proc = Group(
            [node, str(cli), "serve", "--no-open", "--host", HOST, "--port", str(ui_port)], env=env, cwd=home
        )
        try:
            t.proc.wait_listening(t.port, timeout=45)
            return
        except (RuntimeError, TimeoutError) as exc:
            last = f"{exc}: {t.proc.log.read_text(errors='replace')[-600:]}"
            t.stop()
    raise RuntimeError(f"gateway did not start: {last}")


# -- measuring -----------------------------------------------------------------------------------


async def load(
    port: int, args: argparse.Namespace, headers: dict[str, str], model: str, streams: int
) -> tuple[list[loadgen.StreamResult], float]:
    """``streams`` stamped streams spread over ``--ramp`` seconds, each bounded in time."""
    hdrs = {"x-sim-stamp": "1", "x-sim-events": str(args.events), "x-sim-eps": f"{args.eps:g}",
            "x-sim-event-bytes": "16", "x-balancer-no-dedup": "1", **headers}  # fmt: skip
    limit = args.ramp + (args.events / args.eps if args.eps else 0) + 60
    results: list[loadgen.StreamResult] = []

    async def one(i: int) -> None:
        await trio.sleep(args.ramp * i / max(1, streams))
        body = {"model": model, "max_tokens": 1024, "stream": True,
                "messages": [{"role": "user", "content": f"peers {i}"}]}  # fmt: skip
        result = loadgen.StreamResult(error="timeout")
        with trio.move_on_after(limit):
            result = await loadgen.stream_once(HOST, port, body, hdrs)
        results.append(result)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
    return results, time.perf_counter() - started


def summarize(results: list[loadgen.StreamResult], wall: float) -> dict[str, Any]:
    lat = [ns / 1e6 for r in results for ns in r.latencies_ns]
    ttft = [r.first_delta_s * 1000 for r in results if r.first_delta_s]
    return {
        "deltas": len(lat),
        "errors": sum(1 for r in results if r.status != 200 or not r.complete or r.error),
        "deltas/s": len(lat) / wall if wall else 0.0,
        "p50": loadgen.percentile(lat, 50),
        "p99": loadgen.percentile(lat, 99),
        "ttft p50": loadgen.percentile(ttft, 50),
        "first_error": next(
            (r.error or f"HTTP {r.status}" for r in results if r.error or r.status != 200), ""
        ),
    }


async def measure(
    t: Target, scenario: str, args: argparse.Namespace, direct: dict[str, Any] | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"scenario": scenario, "path": t.name}
    if t.error:
        return row | {"deltas": "n/a", "note": t.error}
    model = MODELS[scenario]
    await load(t.port, args, t.headers, model, min(args.streams, 10))  # warm: connections, imports, JITs
    pid = t.proc.pid if t.proc is not None else None
    peak = 0
    cpu0 = tree_cpu_s(pid) if pid else 0.0
    done = False

    async def sample() -> None:
        nonlocal peak
        while not done and pid:  # /proc read off the event loop: the generator's timing is what we measure
            peak = max(peak, await trio.to_thread.run_sync(tree_rss_kib, pid))
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        results, wall = await load(t.port, args, t.headers, model, args.streams)
        done = True
    s = summarize(results, wall)
    expected = args.streams * args.events
    row |= {"deltas": f"{s['deltas']}/{expected}", "errors": s["errors"], "deltas/s": s["deltas/s"],
            "added p50 ms": s["p50"] - direct["p50"] if direct else s["p50"],
            "added p99 ms": s["p99"] - direct["p99"] if direct else s["p99"],
            "ttft p50 ms": s["ttft p50"]}  # fmt: skip
    if pid:
        row["cpu s/1k deltas"] = (tree_cpu_s(pid) - cpu0) * 1000 / max(1, s["deltas"])
        row["peak rss MiB"] = peak / 1024
        row["procs"] = len(tree(pid))
    else:  # direct: the reference, its absolute latency
        row["added p50 ms"], row["added p99 ms"] = 0.0, 0.0
        row["note"] = f"reference: one-way p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms"
    if s["first_error"]:
        row["note"] = (row.get("note", "") + f" first error: {s['first_error']}").strip()
    row["_summary"] = s
    return row


COLUMNS = ["scenario", "path", "deltas", "errors", "deltas/s", "added p50 ms", "added p99 ms", "ttft p50 ms",
           "cpu s/1k deltas", "peak rss MiB", "procs", "note"]  # fmt: skip


async def run_all(args: argparse.Namespace, rows: list[dict[str, Any]], notes: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="trio-balancer-peers-"))
    sim_port = loadgen.free_port()
    sim = start_simulator(sim_port, args)
    litellm, ccr = Target("litellm"), Target("ccr")
    targets: list[Target] = [litellm, ccr]
    try:
        for t, start in ((litellm, start_litellm), (ccr, start_ccr)):
            if t.name not in args.only:
                continue
            print(f"starting {t.name}...", flush=True)
            try:
                start(t, sim_port, work)
            except Exception as exc:  # a peer that cannot run is n/a, not a failed benchmark
                t.error = f"n/a: {type(exc).__name__}: {str(exc)[:300]}".replace("\n", " ").replace("|", "/")
                t.stop()
            notes.append(f"{t.name}: `{t.command}`" + (f" -- {t.error}" if t.error else ""))
        for scenario in args.scenarios:
            kind = "anthropic" if scenario == "passthrough" else "openai"
            direct_t = Target("direct")
            direct_t.port = sim_port
            direct_row = await measure(direct_t, scenario, args, None)
            direct = direct_row.pop("_summary")
            if "direct" in args.only:
                rows.append(direct_row)
                print(loadgen.md_table([direct_row], COLUMNS), flush=True)
            for name in args.only:
                if name == "direct":
                    continue
                if name.startswith("balancer-w"):
                    t = Target(name)
                    targets.append(t)
                    try:
                        start_balancer(t, kind, int(name.removeprefix("balancer-w")), sim_port, work)
                    except Exception as exc:
                        t.error = f"n/a: {type(exc).__name__}: {str(exc)[:300]}".replace("\n", " ")
                else:
                    t = litellm if name == "litellm" else ccr
                row = await measure(t, scenario, args, direct)
                row.pop("_summary", None)
                rows.append(row)
                print(loadgen.md_table([row], COLUMNS), flush=True)
                if name.startswith("balancer-w"):
                    t.stop()  # one balancer at a time: idle workers take nothing from the next path
    finally:
        for t in targets:
            t.stop()
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)


PLOT = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [r for r in json.load(open(sys.argv[1])) if isinstance(r.get("deltas/s"), (int, float))]
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
fig, axes = plt.subplots(len(scenarios), 2, figsize=(11, 3.6 * len(scenarios)), squeeze=False)
for i, sc in enumerate(scenarios):
    mine = [r for r in rows if r["scenario"] == sc]
    names = [r["path"] for r in mine]
    axes[i][0].barh(names, [r["deltas/s"] for r in mine], color="tab:blue")
    axes[i][0].set_title(f"{sc}: deltas/s delivered")
    y = range(len(mine))
    axes[i][1].barh([v - 0.2 for v in y], [r["added p50 ms"] for r in mine], height=0.4, label="added p50")
    axes[i][1].barh([v + 0.2 for v in y], [r["added p99 ms"] for r in mine], height=0.4, label="added p99")
    axes[i][1].set_yticks(list(y), names)
    axes[i][1].set_title(f"{sc}: added latency per delta (ms)")
    axes[i][1].legend(fontsize=8)
    for ax in axes[i]:
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
fig.suptitle(sys.argv[3])
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
"""


def plot(rows: list[dict[str, Any]], title: str) -> str:
    import importlib.util

    out = BENCH / "peers.png"
    python = (
        sys.executable if importlib.util.find_spec("matplotlib") else str(LITELLM_VENV / "bin" / "python")
    )
    if python != sys.executable and not Path(python).exists():
        return "plot skipped: no matplotlib here nor in the LiteLLM venv (python bench/peers.py install)"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(rows, f)
    try:
        done = subprocess.run(
            [python, "-c", PLOT, f.name, str(out), title], capture_output=True, text=True, timeout=120
        )
    finally:
        os.unlink(f.name)
    if done.returncode:
        return f"plot skipped: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return f"plot: {out.name}"


def run(args: argparse.Namespace) -> int:
    args.only = [p for p in PATHS if p in {s.strip() for s in args.only.split(",")}]
    args.scenarios = [s for s in SCENARIOS if s in {x.strip() for x in args.scenarios.split(",")}]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    trio.run(run_all, args, rows, notes)
    table = loadgen.md_table(rows, COLUMNS)
    print("\n" + table)
    notes = [*versions(), *notes, json.dumps({k: v for k, v in vars(args).items() if k != "func"})]
    notes.append("added = path minus direct to the simulator, same run, per stamped delta (x-sim-stamp); "
                 "ttft = request sent -> first content_block_delta; cpu and rss: the whole process tree")  # fmt: skip
    if args.plot:
        notes.append(plot(rows, f"{args.streams} streams x {args.events} deltas at {args.eps:g}/s"))
    for n in notes:
        print("-", n)
    if not args.no_record:
        loadgen.append_results("peers", " ".join(["python", *sys.argv]), table, notes)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install LiteLLM and claude-code-router into bench/.peers/").set_defaults(
        func=install
    )
    r = sub.add_parser("run", help="measure every path")
    r.add_argument("--streams", type=int, default=100)
    r.add_argument("--eps", type=float, default=50.0, help="deltas per second per stream")
    r.add_argument("--events", type=int, default=20, help="deltas per stream")
    r.add_argument("--ramp", type=float, default=0.2, help="seconds over which the streams start")
    r.add_argument("--only", default=",".join(PATHS), help=f"paths, comma-separated: {','.join(PATHS)}")
    r.add_argument("--scenarios", default=",".join(SCENARIOS), help="passthrough,openai")
    r.add_argument("--plot", action="store_true", help="write bench/peers.png")
    r.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    r.set_defaults(func=run)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
