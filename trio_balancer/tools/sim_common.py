"""What every dialect of the simulator shares: its options, the request-level fault preamble,
the paced deltas with their faults, and the h11 exchange answers are written to.

``tools/simulator.py`` is the server; each dialect (Anthropic and OpenAI there, Anthropic's
shapes in ``sim_anthropic.py``, the clouds in ``sim_bedrock.py``, ``sim_vertex.py`` and
``sim_gemini.py``) says the faults in its own wire shape through :class:`FaultShape` and
:class:`StreamShape`, but when and which faults apply is decided here, once. Imports nothing
of the other ``sim_*`` modules, so they can all import it.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Protocol

import attrs
import h11
import trio

__all__ = [
    "STAMP_DIGITS",
    "Cut",
    "Exchange",
    "FaultShape",
    "Header",
    "Request",
    "Reset",
    "SimOptions",
    "SimState",
    "Step",
    "StreamShape",
    "after_tool_results",
    "delta_text",
    "fault_preamble",
    "google_error",
    "json_object",
    "output_tokens",
    "paced_deltas",
    "text",
    "tool_input",
]

STAMP_DIGITS = 19
_WORDS = ("stream ", "event ", "balancer ", "trio ", "nursery ", "channel ", "latency ", "provider ")
_CJK = "流式响应实时转发每个事件到达客户端保持顺序不丢数据"
# Where a delta's text starts in its JSON, in every dialect's spelling (x-sim-bad-utf8 spoils it).
_TEXT_START = re.compile(rb'"(?:text|content)":\s*"')

Header = tuple[str, str]
Step = tuple[str, Any]  # ("event", bytes or a callable making them) or a pacing/fault step


@attrs.frozen
class SimOptions:
    """The simulator's behaviour; ``x-sim-*`` headers override it per request (the table is in
    ``tools/simulator.py``)."""

    ttfb: float = 0.0
    eps: float = 20.0
    events: int = 20
    event_bytes: int = 16
    cjk: bool = False
    tools: int = 0
    status: int = 200
    retry_after: float | None = None
    error_after: int | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    trickle: bool = False
    no_usage: bool = False
    stamp: bool = False
    reset_after: int | None = None
    no_status: bool = False
    garbage: bool = False
    bad_utf8: bool = False
    huge_event: int = 0
    context_window: int = 0  # 0: any prompt fits (``Simulator(windows=...)`` sets it per model)
    tool_name: str = "read_file"
    tool_input: str = ""  # JSON object; "" for the default input
    tool_loop: bool = False
    reply: str = ""
    finish: str = ""

    def with_headers(self, headers: Mapping[str, str]) -> SimOptions:
        changes: dict[str, Any] = {}
        for field in attrs.fields(SimOptions):
            value = headers.get("x-sim-" + field.name.replace("_", "-"))
            if value is None:
                continue
            if field.type in ("bool", bool):
                changes[field.name] = value.strip().lower() in ("1", "true", "yes")
            elif field.name in ("ttfb", "eps", "retry_after"):
                changes[field.name] = float(value)
            elif field.type in ("str", str):
                changes[field.name] = value
            else:
                changes[field.name] = int(value)
        return attrs.evolve(self, **changes) if changes else self


class SimState(Protocol):
    """What a dialect's handler reads and keeps of the simulator (``simulator.Simulator``)."""

    defaults: SimOptions
    windows: dict[str, int]  # model -> context window, over ``SimOptions.context_window``
    aws_keys: dict[str, str]
    google_keys: dict[str, str]
    google_tokens: set[str]
    gemini_keys: frozenset[str]
    token_requests: int


class Cut(Exception):
    """Drop the connection now, mid-response (or before any)."""


class Reset(Exception):
    """Reset the connection now (RST), mid-response."""


@attrs.frozen
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@attrs.define
class Exchange:
    """One request's answer on the wire; ``headers`` go on every response it sends."""

    conn: h11.Connection
    stream: trio.SocketStream
    headers: list[Header] = attrs.Factory(list)

    async def _data(self, data: bytes, *, trickle: bool) -> None:
        if trickle:
            for i in range(len(data)):
                await self.stream.send_all(self.conn.send(h11.Data(data=data[i : i + 1])))
        else:
            await self.stream.send_all(self.conn.send(h11.Data(data=data)))

    async def send(
        self, status: int, payload: Any, extra: Iterable[Header] = (), *, trickle: bool = False
    ) -> None:
        """A whole JSON answer."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        head = [("content-type", "application/json"), ("content-length", str(len(body)))]
        headers = [(n.encode(), v.encode()) for n, v in [*head, *self.headers, *extra]]
        await self.stream.send_all(self.conn.send(h11.Response(status_code=status, headers=headers)))
        await self._data(body, trickle=trickle)
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))

    async def send_stream(
        self, opts: SimOptions, steps: Iterator[Step], *, frame: Callable[[bytes], bytes] | None = None,
        content_type: str = "text/event-stream; charset=utf-8",
    ) -> None:  # fmt: skip
        """An event stream, with the pacing and the faults ``opts`` asks for; ``frame``
        re-wraps each SSE event in another wire format (Bedrock's event stream)."""
        head = [("content-type", content_type), ("cache-control", "no-cache"), *self.headers]
        headers = [(n.encode(), v.encode()) for n, v in head]
        await self.stream.send_all(self.conn.send(h11.Response(status_code=200, headers=headers)))
        if opts.garbage:
            rng = random.Random(7)
            for _ in range(20):
                await self._data(rng.randbytes(97), trickle=False)
            await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
            return
        gap = 1.0 / opts.eps if opts.eps > 0 else 0.0
        for kind, data in steps:
            if kind == "delta_wait":
                if gap:
                    await trio.sleep(gap)
                continue
            if kind == "cut":
                raise Cut
            if kind == "reset":
                raise Reset
            if kind == "stall":
                # Send nothing more, but notice when the client gives up, as a real server would.
                while await self.stream.receive_some(65536):
                    pass
                raise Cut
            wire = data() if callable(data) else data
            if frame is not None and not (wire := frame(wire)):
                continue
            await self._data(wire, trickle=opts.trickle)
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))


@attrs.frozen
class FaultShape:
    """How one dialect says the request-level faults: ``error(status)`` is the headers and body
    of an ``x-sim-status`` answer, ``too_long(tokens, window)`` the status, headers and body of
    its answer to a prompt longer than the model's window."""

    error: Callable[[int], tuple[list[Header], Any]]
    too_long: Callable[[int, int], tuple[int, list[Header], Any]]


async def fault_preamble(
    ex: Exchange, opts: SimOptions, shape: FaultShape, *, input_tokens: int = 0, window: int = 0
) -> bool:
    """The request-level faults, for every dialect, in its ``shape``: the wait before the
    headers (``ttfb``), a close without a status, an error status (with ``retry-after`` when
    one is asked for), a prompt over ``window`` (0: none; token counts pass none). True when it
    answered: the dialect must then send nothing more."""
    if opts.ttfb:
        await trio.sleep(opts.ttfb)
    if opts.no_status:
        raise Cut
    if opts.status != 200:
        headers, body = shape.error(opts.status)
        retry = [("retry-after", f"{opts.retry_after:g}")] if opts.retry_after is not None else []
        await ex.send(opts.status, body, [*headers, *retry])
        return True
    if window and input_tokens > window:
        status, headers, body = shape.too_long(input_tokens, window)
        await ex.send(status, body, headers)
        return True
    return False


@attrs.frozen
class StreamShape:
    """How one dialect's stream says the stream faults: ``error_event`` is its mid-stream error
    (``x-sim-error-after``), ``event(data)`` wraps raw data as one of its events
    (``x-sim-huge-event``)."""

    error_event: bytes
    event: Callable[[bytes], bytes]


def paced_deltas(
    opts: SimOptions, shape: StreamShape, delta: Callable[[int], bytes]
) -> Generator[Step, None, bool]:
    """The steps of the paced text deltas, for every dialect: ``delta(i)`` makes the ``i``-th
    (when it is sent, so a stamp is its send time), with the waits and faults asked for between
    them, invalid UTF-8 in the text (``bad_utf8``), one huge event after the first. Returns True
    when an error fault ended the stream: nothing may follow its error event."""
    for i in range(opts.events + 1):
        fault = _fault(opts, i)
        if fault == "error":
            yield "event", shape.error_event
            return True
        if fault:
            yield fault, None
        if i == opts.events:
            return False
        if i:
            yield "delta_wait", None
        yield "event", partial(_spoiled, opts, delta, i) if opts.bad_utf8 else partial(delta, i)
        if i == 0 and opts.huge_event:
            yield "event", shape.event(b"A" * opts.huge_event)
    return False


def _spoiled(opts: SimOptions, delta: Callable[[int], bytes], i: int) -> bytes:
    return _TEXT_START.sub(lambda m: m[0] + b"\xff\xfe", delta(i), count=1)


def _fault(opts: SimOptions, sent: int) -> str | None:
    if opts.cut_after is not None and sent >= opts.cut_after:
        return "cut"
    if opts.reset_after is not None and sent >= opts.reset_after:
        return "reset"
    if opts.stall_after is not None and sent >= opts.stall_after:
        return "stall"
    if opts.error_after is not None and sent >= opts.error_after:
        return "error"
    return None


def text(opts: SimOptions, i: int) -> str:
    """The ``i``-th delta's text: ``reply`` cut in ``events`` pieces, else words (or CJK)."""
    if opts.reply:
        size = -(-len(opts.reply) // max(1, opts.events))
        return opts.reply[i * size : (i + 1) * size]
    if opts.cjk:
        return "".join(_CJK[(i + k) % len(_CJK)] for k in range(opts.event_bytes))
    out = ""
    k = i
    while len(out) < opts.event_bytes:
        out += _WORDS[k % len(_WORDS)]
        k += 1
    return out[: opts.event_bytes]


def delta_text(opts: SimOptions, i: int) -> str:
    """A streamed delta's text, stamped with its send time when ``stamp`` asks."""
    out = text(opts, i)
    return f"{time.time_ns():0{STAMP_DIGITS}d} {out}" if opts.stamp else out


def tool_input(opts: SimOptions, t: int) -> dict[str, Any]:
    """The input of the ``t``-th tool call: ``x-sim-tool-input``, else a file to read."""
    if opts.tool_input:
        try:
            given = json.loads(opts.tool_input)
        except ValueError:
            given = None
        if isinstance(given, dict):
            return given
    return {"path": f"notes/{t}.md", "limit": 20}


def after_tool_results(opts: SimOptions, results: str | None, offered: Iterable[str] = ()) -> SimOptions:
    """With ``tool_loop``, the tool is called only if the request offers it by name (a real
    model calls nothing else: Claude Code's background calls offer none), and a turn
    answering tool calls ends the loop with text quoting the results."""
    if not opts.tool_loop:
        return opts
    if results is None:
        return opts if opts.tool_name in set(offered) else attrs.evolve(opts, tools=0)
    quoted = " ".join(results.split())[:400]
    return attrs.evolve(opts, tools=0, reply=f"The tool said: {quoted}", events=min(opts.events, 4) or 1)


def output_tokens(opts: SimOptions) -> int:
    per = opts.event_bytes if opts.cjk else max(1, opts.event_bytes // 4)
    return opts.events * per + opts.tools * 12


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object (empty: ``{}``), else None."""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def google_error(
    status: int,
    defaults: Mapping[int, tuple[str, str]],
    message: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Google's error answer (Vertex's and Gemini's): ``{"error": {code, message, status[, details]}}``;
    ``defaults`` maps a status to its canonical name and the service's usual message."""
    name, default = defaults.get(status) or defaults[500 if status >= 500 else 400]
    error: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return {"error": error}
