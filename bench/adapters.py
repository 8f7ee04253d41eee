"""CPU per upstream event of each provider kind's adapter, next to Anthropic passthrough (issue 18).

In process, no sockets. Each kind gets the same answer in its own wire format: 1,000 text
deltas of 16-40 characters (seeded), with the events around them that the real service sends
(``message_start`` ... ``message_stop``; OpenAI's role chunk, finish chunk, usage chunk and
``[DONE]``; Gemini's running ``usageMetadata`` on every chunk and ``finishReason`` on the last).
What is timed, per kind:

- ``adapter``: the kind's row of ``protocol/answers.py`` alone: its decoder
  (``SSEDecoder``, or ``EventStreamDecoder`` for Bedrock's AWS event-stream frames) and its
  converter (``StreamConverter`` for OpenAI, ``GeminiStreamConverter`` for Gemini; none for
  Anthropic, Vertex and Bedrock, whose events are Anthropic's);
- ``relay``: ``flight/relay.Relay.run`` on the same chunks with an in-memory outlet, i.e.
  everything the relay does per event: decode, convert, usage tracker, the ``signature``
  look, the commit gate (with its shape check for unconverted events), the client model put
  back into ``message_start`` (Bedrock, Vertex: the cloud names the model its own way), the
  await per published chunk.

Vertex streams Anthropic's SSE as it is: its adapter is passthrough's, byte for byte (its row
is the same code on the same bytes, so the difference to Anthropic's is the noise).

Two chunkings: ``event``, one upstream event per chunk (a paced stream: at 20 events/s each
socket read holds one event, so per-chunk costs count fully), and ``1-4KB`` (random network
sized chunks, several events per read: a fast model or a reader that fell behind).

Times are ``time.process_time()`` (this process's CPU), divided by the upstream events (SSE
events, frames, chunks, ``[DONE]`` included); each figure is the median (and the min) of
``--repeats`` runs of ``--streams`` streams, kinds interleaved within each run.

End to end (``--e2e``): the simulator, one balancer per kind (started together; the same
config but the provider's kind and what it needs to sign in to the simulator's dialect of it)
and the load generator as separate processes, as in ``bench/bench.py``; the balancer's CPU
from /proc per text delta that reached the client. Each kind gets a load of long answers
(``--e2e-deltas``) and then one of 5-delta answers at the same concurrency (its second
provider, routed by model): the difference gives the marginal CPU per delta, and what is left
the CPU per request (the request's fit, signing, connection, Hypercorn's request cycle).
``--e2e-rounds`` rounds, the kinds interleaved; medians over the rounds. A kind the balancer
refuses at start (``kind = "gemini"`` before it is wired) is skipped and said so.

The machine may be shared: the CPU that other processes used meanwhile (from /proc/stat, less
this benchmark's processes) is printed with each part; read the numbers with it.

    python bench/adapters.py [--streams 2] [--repeats 15] [--e2e] [--e2e-rounds 2] [--no-record]

Bounded: the in-process part is (5 kinds x 2 levels x 2 chunkings) x repeats x streams x 1,000
events (~25 s with the defaults on the 2-core machine); ``--e2e`` adds ~5 s of start and
~10 s per kind and round (~110 s with the defaults).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

import trio_balancer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

from trio_balancer.config import ProviderConfig
from trio_balancer.flight.attempt import IdleTimer, UpstreamResponse
from trio_balancer.flight.hub import Head, Item
from trio_balancer.flight.relay import Relay, RelayLimits
from trio_balancer.protocol import events as ev
from trio_balancer.protocol.answers import ANSWER_FORMATS, EventConverter, EventDecoder
from trio_balancer.protocol.bedrock import EventStreamDecoder
from trio_balancer.protocol.convert import StreamConverter
from trio_balancer.protocol.convert.gemini_stream import GeminiStreamConverter
from trio_balancer.protocol.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from trio_balancer.protocol.thinking import SignatureBook, mint_signature
from trio_balancer.tools.sim_bedrock import SIM_AWS_KEY_ID, SIM_AWS_SECRET, sse_to_frame

HOST = "127.0.0.1"
KINDS = ("anthropic", "vertex", "bedrock", "openai", "gemini")
CLIENT_MODEL = "claude-opus-4-6"
UPSTREAM_MODEL = {  # what each kind's service writes in its answer
    "anthropic": CLIENT_MODEL,
    "vertex": CLIENT_MODEL,  # Vertex's id of Opus 4.6 is the undated name (protocol/cloud_models.py)
    "bedrock": "global.anthropic.claude-opus-4-6-v1",
    "openai": "gpt-4.1-2025-04-14",
    "gemini": "gemini-2.5-flash",
}
WORDS = ("stream ", "event ", "balancer ", "trio ", "nursery ", "channel ", "latency ", "provider ",
         "the ", "of ", "a ", "relay ", "converted ", "delta ", "bytes ")  # fmt: skip
GEMINI_KEY = "AIzaSy-sim-gemini-key-0000000000000000"


# -- the streams ------------------------------------------------------------------------------


def texts(n: int, seed: int = 18) -> list[str]:
    """``n`` deltas of 16-40 characters of English-like words."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        size = rnd.randint(16, 40)
        text = ""
        while len(text) < size:
            text += rnd.choice(WORDS)
        out.append(text[:size])
    return out


def anthropic_events(deltas: list[str], model: str) -> list[bytes]:
    message: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 2113, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1},
    }  # fmt: skip
    return [
        ev.encode(ev.message_start(message)),
        ev.encode(ev.content_block_start(0, {"type": "text", "text": ""})),
        ev.PING,
        *(ev.encode(ev.content_block_delta(0, {"type": "text_delta", "text": t})) for t in deltas),
        ev.encode(ev.content_block_stop(0)),
        ev.encode(ev.message_delta({"stop_reason": "end_turn", "stop_sequence": None}, {"output_tokens": len(deltas) * 6})),
        ev.encode(ev.message_stop()),
    ]  # fmt: skip


def bedrock_frames(deltas: list[str]) -> list[bytes]:
    """Bedrock's frames of the same answer (no ping; invocation metrics on ``message_stop``),
    as the simulator writes them."""
    metrics = {"inputTokenCount": 2113, "outputTokenCount": len(deltas) * 6, "invocationLatency": 9000,
               "firstByteLatency": 400}  # fmt: skip
    events = anthropic_events(deltas, UPSTREAM_MODEL["bedrock"])
    frames = [sse_to_frame(e) for e in events[:-1]] + [sse_to_frame(events[-1], metrics)]
    return [f for f in frames if f]


def openai_events(deltas: list[str]) -> list[bytes]:
    """chat.completion.chunk events as OpenAI streams them with ``include_usage``."""
    head = {"id": "chatcmpl-BXJ0zs6iGJ1NaDQb2tPNzWjs6qv3e", "object": "chat.completion.chunk", "created": 1764300000,
            "model": UPSTREAM_MODEL["openai"], "service_tier": "default", "system_fingerprint": "fp_b3f1157249"}  # fmt: skip

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )
        data = json.dumps(
            {**head, "choices": choices, "usage": usage}, ensure_ascii=False, separators=(",", ":")
        )
        return f"data: {data}\n\n".encode()  # fmt: skip

    usage = {"prompt_tokens": 2113, "completion_tokens": len(deltas) * 6, "total_tokens": 2113 + len(deltas) * 6,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}  # fmt: skip
    return [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        *(chunk({"content": t}) for t in deltas),
        chunk({}, "stop"),
        chunk(None, usage=usage),
        b"data: [DONE]\n\n",
    ]


def gemini_events(deltas: list[str]) -> list[bytes]:
    """streamGenerateContent?alt=sse chunks: one text part each, running usage, CRLF line ends
    (the shape of tests/data/gemini/text.sse and of the simulator's)."""
    out = []
    for i, text in enumerate(deltas):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if i == len(deltas) - 1:
            candidate["finishReason"] = "STOP"
        usage = {
            "promptTokenCount": 2113,
            "candidatesTokenCount": 6 * (i + 1),
            "totalTokenCount": 2113 + 6 * (i + 1),
        }
        data = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": UPSTREAM_MODEL["gemini"],
                "responseId": "lXg2abCDEfGhIjKlMnOpQr"}  # fmt: skip
        out.append(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\r\n\r\n")
    return out


def wire_events(kind: str, deltas: list[str]) -> list[bytes]:
    if kind in ("anthropic", "vertex"):
        return anthropic_events(deltas, UPSTREAM_MODEL[kind])
    if kind == "bedrock":
        return bedrock_frames(deltas)
    if kind == "openai":
        return openai_events(deltas)
    return gemini_events(deltas)


def chunked(events: list[bytes], how: str, seed: int = 4) -> list[bytes]:
    if how == "event":
        return list(events)
    wire, rnd, out, pos = b"".join(events), random.Random(seed), [], 0
    while pos < len(wire):
        size = rnd.randint(1024, 4096)
        out.append(wire[pos : pos + size])
        pos += size
    return out


# -- what is timed ----------------------------------------------------------------------------


def decoder_of(kind: str) -> EventDecoder:
    if kind == "bedrock":
        return EventStreamDecoder(DEFAULT_MAX_EVENT_BYTES)
    return SSEDecoder(DEFAULT_MAX_EVENT_BYTES)


def converter_of(kind: str) -> EventConverter | None:
    if kind == "openai":  # protocol/answers.py _openai_stream
        return StreamConverter(model=CLIENT_MODEL, sign=mint_signature)
    if kind == "gemini":  # protocol/answers.py _gemini_stream
        return GeminiStreamConverter(model=CLIENT_MODEL)
    return None


def adapter_once(kind: str, chunks: list[bytes]) -> int:
    """One stream through the kind's decoder and converter; the Anthropic events out."""
    decoder, converter = decoder_of(kind), converter_of(kind)
    out = 0
    for chunk in chunks:
        decoded = decoder.feed(chunk)
        if converter is None:
            out += len(decoded)
        else:
            for event in decoded:
                out += len(converter.feed(event))
    tail = decoder.close()
    if converter is not None:
        if tail is not None:
            out += len(converter.feed(tail))
        out += len(converter.close())
    elif tail is not None:
        out += 1
    return out


class Outlet:
    """The flight's side of the relay, doing nothing: what is left is the relay's own work."""

    def __init__(self) -> None:
        self.committed = False

    async def commit(self, head: Head, first: bytes | None, *, held_events: int = 0) -> None:
        self.committed = True

    async def publish(self, item: Item) -> None:
        pass


def provider_of(kind: str) -> ProviderConfig:
    extra: dict[str, Any] = {
        "anthropic": {"api_key": "sk-bench"},
        "openai": {"api_key": "sk-bench"},
        "gemini": {"api_key": GEMINI_KEY},
        "bedrock": {"region": "us-east-1"},
        "vertex": {"region": "us-east5", "project": "sim-project"},
    }[kind]
    return ProviderConfig(name=kind, kind=kind, base_url="http://127.0.0.1:9", **extra)


async def _body(chunks: list[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk


async def relay_once(kind: str, provider: ProviderConfig, chunks: list[bytes], book: SignatureBook) -> int:
    """One stream through the real relay, as ``flight/flight.py`` makes it; the events published."""
    renamed = UPSTREAM_MODEL[kind] != CLIENT_MODEL and not ANSWER_FORMATS[kind].converted
    relay = Relay(
        provider, {"model": CLIENT_MODEL}, Outlet(), ["sk-bench"], limits=RelayLimits(),
        forward=lambda _s: None, thinking=book, client_model=CLIENT_MODEL if renamed else None,
        converted_model=CLIENT_MODEL,
    )  # fmt: skip
    response = UpstreamResponse(
        [(b"content-type", b"x")], True, _body(chunks), IdleTimer(trio.CancelScope(), 60.0)
    )
    await relay.run(response)
    assert relay.completed, kind
    return relay.events


def time_adapter(kind: str, chunks: list[bytes], streams: int) -> tuple[float, int]:
    gc.collect()
    start = time.process_time()
    for _ in range(streams):
        out = adapter_once(kind, chunks)
    return time.process_time() - start, out


def time_relay(kind: str, chunks: list[bytes], streams: int) -> tuple[float, int]:
    provider, book = provider_of(kind), SignatureBook()

    async def run() -> tuple[float, int]:
        gc.collect()
        start = time.process_time()
        for _ in range(streams):
            out = await relay_once(kind, provider, chunks, book)
        return time.process_time() - start, out

    return trio.run(run)


LEVELS: dict[str, Callable[[str, list[bytes], int], tuple[float, int]]] = {
    "adapter": time_adapter,
    "relay": time_relay,
}


def in_process(args: argparse.Namespace) -> list[dict[str, Any]]:
    deltas = texts(args.deltas)
    wires = {kind: wire_events(kind, deltas) for kind in KINDS}
    kinds = [k for k in KINDS if k in ANSWER_FORMATS]  # a kind with no row yet is left out
    cases = [(kind, how) for how in ("event", "1-4KB") for kind in kinds]
    chunks = {(kind, how): chunked(wires[kind], how) for kind, how in cases}
    samples: dict[tuple[str, str, str], list[float]] = {}
    out_events: dict[tuple[str, str, str], int] = {}
    for fn in LEVELS.values():  # warm: imports, caches, the first trio.run
        for kind, how in cases:
            fn(kind, chunks[kind, how], 1)
    for _ in range(args.repeats):
        for level, fn in LEVELS.items():
            for kind, how in cases:
                seconds, out = fn(kind, chunks[kind, how], args.streams)
                samples.setdefault((kind, how, level), []).append(
                    seconds * 1e6 / (args.streams * len(wires[kind]))
                )
                out_events[kind, how, level] = out
    rows = []
    for kind, how in cases:
        row: dict[str, Any] = {
            "kind": kind,
            "chunks": how,
            "upstream events": len(wires[kind]),
            "bytes/event": round(sum(map(len, wires[kind])) / len(wires[kind])),
            "chunks/stream": len(chunks[kind, how]),
            "events out": out_events[kind, how, "relay"],
        }
        for level in LEVELS:
            us = statistics.median(samples[kind, how, level])
            base = statistics.median(samples["anthropic", how, level])
            row[f"{level} us/event"] = us
            row[f"{level} min"] = min(samples[kind, how, level])
            row[f"{level} x passthrough"] = us / base
        rows.append(row)
    return rows


IN_PROCESS_COLUMNS = ["kind", "chunks", "upstream events", "bytes/event", "chunks/stream", "events out",
                      "adapter us/event", "adapter min", "adapter x passthrough", "relay us/event", "relay min",
                      "relay x passthrough"]  # fmt: skip


# -- end to end -------------------------------------------------------------------------------


def serve_simulator(port: int, account: Path) -> None:
    """The simulator with a service account its token endpoint knows (for Vertex); any Gemini
    key; the default AWS test keys (for Bedrock)."""
    from trio_balancer.tools import simulator
    from trio_balancer.tools.sim_vertex import make_service_account

    email, public = make_service_account(account, f"http://{HOST}:{port}/token")
    sim = simulator.Simulator(simulator.SimOptions(), google_keys={email: public})
    trio.run(partial(simulator.serve, sim, HOST, port))


def provider_toml(kind: str, name: str, sim_port: int, account: Path, headers: str) -> str:
    base = f"http://{HOST}:{sim_port}"
    lines = {
        "anthropic": f'base_url = "{base}"\napi_key = "sk-bench"',
        "openai": f'base_url = "{base}/v1"\napi_key = "sk-bench"',
        "bedrock": f'base_url = "{base}"\nregion = "us-east-1"',
        "vertex": f'base_url = "{base}"\nregion = "us-east5"\nproject = "sim-project"\nservice_account_file = "{account}"',
        "gemini": f'base_url = "{base}"\napi_key = "{GEMINI_KEY}"',
    }[kind]
    return f'[[providers]]\nname = "{name}"\nkind = "{kind}"\n{lines}\nmax_connections = 4000\nmax_keepalive = 2000\n{headers}\n'


def sim_headers(deltas: int, eps: float) -> str:
    """The simulator's options in the provider's configured headers: a cloud or converted kind
    gets headers of its own, not the client's (as bench.py's openai scenario), and the
    provider's override the client's for the others, so every kind is told alike."""
    return (
        f'headers = {{ "x-sim-stamp" = "1", "x-sim-events" = "{deltas}", "x-sim-eps" = "{eps:g}", '
        f'"x-sim-event-bytes" = "{E2E_DELTA_CHARS}" }}'
    )


def start_balancer(
    kind: str, port: int, sim_port: int, work: Path, account: Path, args: argparse.Namespace
) -> loadgen.Proc:
    """One balancer, two providers of ``kind`` on the simulator: Opus answers are long
    (``--e2e-deltas``), Sonnet answers short (:data:`SHORT_DELTAS`)."""
    config = work / f"balancer-{kind}.toml"
    config.write_text(
        f'[server]\nhost = "{HOST}"\nport = {port}\nmax_concurrent = 10000\n\n'
        f'[ledger]\nurl = "sqlite:///{work}/ledger-{kind}.sqlite3"\n\n'
        + provider_toml(kind, "long", sim_port, account, sim_headers(args.e2e_deltas, args.eps))
        + provider_toml(kind, "short", sim_port, account, sim_headers(SHORT_DELTAS, args.eps))
        + '\n[[routes]]\nmatch = "claude-opus-*"\ntargets = [{ provider = "long" }]\n'
        + '\n[[routes]]\nmatch = "claude-sonnet-*"\ntargets = [{ provider = "short" }]\n'
    )  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": SIM_AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SIM_AWS_SECRET,
           "AWS_CONFIG_FILE": str(work / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    proc = loadgen.Proc(
        [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--log-level", "warning"],
        env=env,
    )
    return proc  # not listening yet: the balancers start side by side


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Others:
    """CPU used by processes outside this benchmark while it measures (the machine is shared:
    other CPU contends for the cores and caches, and the numbers are only as good as it is low)."""

    def __init__(self, procs: list[loadgen.Proc]) -> None:
        self._procs = procs
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        ours = time.process_time() + sum(p.cpu_s() for p in self._procs)
        return time.perf_counter(), machine_busy_s(), ours

    def percent(self) -> float:
        """Others' CPU since the start, in % of one core."""
        wall, busy, ours = (b - a for a, b in zip(self._start, self._sample(), strict=True))
        return max(0.0, busy - ours) * 100 / wall if wall else float("nan")


def end_to_end(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Every kind's balancer started at once, then ``--e2e-rounds`` rounds of (long load, short
    load) per kind, the kinds interleaved, so that a burst of outside load hits one round."""
    work = Path(tempfile.mkdtemp(prefix="trio-balancer-adapters-"))
    account, sim_port = work / "account.json", loadgen.free_port()
    sim = loadgen.Proc([sys.executable, __file__, "--serve-sim", str(sim_port), "--account", str(account)])
    balancers: dict[str, tuple[loadgen.Proc, int]] = {}
    starting: dict[str, tuple[loadgen.Proc, int]] = {}
    notes: list[str] = []
    samples: dict[str, list[dict[str, Any]]] = {}
    try:
        sim.wait_listening(sim_port)
        for kind in KINDS:
            port = loadgen.free_port()
            starting[kind] = start_balancer(kind, port, sim_port, work, account, args), port
        for kind, (proc, port) in starting.items():
            try:
                proc.wait_listening(port)
                balancers[kind] = proc, port
            except RuntimeError as exc:  # refused at start (the process exited)
                refusal = next(
                    (line.strip() for line in str(exc).splitlines() if kind in line), str(exc)[-300:]
                )
                notes.append(f"e2e {kind}: skipped, the balancer refused the config: {refusal}")
                print(notes[-1], flush=True)
        for _, port in balancers.values():
            for model in (CLIENT_MODEL, SHORT_MODEL):  # both providers: connections, tokens
                trio.run(
                    partial(
                        loadgen.run_load, HOST, port, streams=20, events=5, eps=0, ramp_s=0.2, model=model
                    )
                )
        everyone = [sim, *(proc for proc, _ in balancers.values())]
        for round_ in range(args.e2e_rounds):
            for kind, (bal, port) in balancers.items():
                runs = []
                for model in (CLIENT_MODEL, SHORT_MODEL):  # long answers, then short ones
                    cpu0, others = bal.cpu_s(), Others(everyone)
                    load = trio.run(
                        partial(loadgen.run_load, HOST, port, streams=args.e2e_streams, events=args.e2e_deltas,
                                eps=args.eps, event_bytes=E2E_DELTA_CHARS, ramp_s=args.ramp, model=model)
                    )  # fmt: skip
                    deltas = sum(len(r.latencies_ns) for r in load.results)
                    runs.append((bal.cpu_s() - cpu0, deltas, load, others.percent()))
                (cpu, deltas, load, others_pct), (cpu_short, deltas_short, short, _) = runs
                s = load.summary()
                # cpu = streams x per-request + deltas x per-delta, solved over the two loads.
                per_delta = (cpu - cpu_short) / max(1, deltas - deltas_short)
                sample = {"deltas": deltas, "short deltas": deltas_short, "errors": int(s["errors"]) + short.errors,
                          "client events": int(s["events"]), "via p50 ms": s["p50_ms"], "via p99 ms": s["p99_ms"],
                          "cpu us/delta": cpu * 1e6 / max(1, deltas), "marginal us/delta": per_delta * 1e6,
                          "per request ms": (cpu_short - deltas_short * per_delta) / args.e2e_streams * 1e3,
                          "others %cpu": others_pct}  # fmt: skip
                samples.setdefault(kind, []).append(sample)
                print(
                    f"round {round_ + 1} {kind}: {json.dumps({k: round(v, 1) for k, v in sample.items()})}",
                    flush=True,
                )
    finally:
        for proc, _ in starting.values():
            proc.stop()
        sim.stop()
    rows = []
    for kind, runs_of in samples.items():
        row: dict[str, Any] = {"kind": kind, "rounds": len(runs_of), "streams": args.e2e_streams}
        for key in runs_of[0]:
            values = [r[key] for r in runs_of]
            row[key] = (
                sum(values)
                if key in ("deltas", "short deltas", "errors", "client events")
                else statistics.median(values)
            )
        row["cpu us/delta per round"] = ", ".join(f"{r['cpu us/delta']:.0f}" for r in runs_of)
        rows.append(row)
    base = next((r for r in rows if r["kind"] == "anthropic"), None)
    for r in rows:
        r["x passthrough"] = r["cpu us/delta"] / base["cpu us/delta"] if base else float("nan")
        r["marginal x passthrough"] = (
            r["marginal us/delta"] / base["marginal us/delta"] if base else float("nan")
        )
    return rows, notes


E2E_COLUMNS = ["kind", "rounds", "streams", "deltas", "short deltas", "errors", "via p50 ms", "via p99 ms",
               "cpu us/delta", "cpu us/delta per round", "x passthrough", "marginal us/delta", "marginal x passthrough",
               "per request ms", "others %cpu"]  # fmt: skip
SHORT_DELTAS = 5  # the second load's answers: what is left of the CPU is per request
SHORT_MODEL = "claude-sonnet-4-6"  # routed to the provider whose answers are short
E2E_DELTA_CHARS = 28  # the middle of the in-process deltas' 16-40


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=1000, help="text deltas per in-process stream")
    parser.add_argument("--streams", type=int, default=2, help="streams per timed run")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (the median is shown)")
    parser.add_argument(
        "--e2e", action="store_true", help="also through the simulator and a balancer per kind"
    )
    parser.add_argument("--e2e-streams", type=int, default=100)
    parser.add_argument("--e2e-deltas", type=int, default=100)
    parser.add_argument(
        "--e2e-rounds", type=int, default=2, help="long+short loads per kind, kinds interleaved"
    )
    parser.add_argument("--eps", type=float, default=20.0, help="end to end: deltas per second per stream")
    parser.add_argument(
        "--ramp", type=float, default=1.0, help="end to end: seconds over which streams start"
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--serve-sim", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--account", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sim:
        serve_simulator(args.serve_sim, args.account)
        return 0
    started, others = time.perf_counter(), Others([])
    rows = in_process(args)
    table = loadgen.md_table(rows, IN_PROCESS_COLUMNS)
    print(table, flush=True)
    other = f"in process: {time.perf_counter() - started:.1f} s; other processes used {others.percent():.0f} % of a core meanwhile"
    print(other, flush=True)
    notes = [
        json.dumps({k: v for k, v in vars(args).items() if k not in ("serve_sim", "account")}),
        f"trio_balancer from {Path(trio_balancer.__file__).parent}",
        other,
    ]
    if args.e2e:
        e2e_started = time.perf_counter()
        e2e_rows, e2e_notes = end_to_end(args)
        e2e_table = loadgen.md_table(e2e_rows, E2E_COLUMNS)
        print(e2e_table)
        notes.append(f"end to end: {time.perf_counter() - e2e_started:.1f} s")
        print(notes[-1], flush=True)
        table += (
            "\n\nEnd to end (the balancer's CPU from /proc per text delta; medians over the rounds):\n\n"
            + e2e_table
        )
        notes += e2e_notes
    if not args.no_record:
        command = " ".join(["python", "bench/adapters.py", *sys.argv[1:]])
        if os.environ.get("PYTHONPATH"):  # a snapshot of the tree, measured in place of this one
            command = f"PYTHONPATH={os.environ['PYTHONPATH']} {command}"
        loadgen.append_results("adapters (issue 18): CPU per upstream event", command, table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
