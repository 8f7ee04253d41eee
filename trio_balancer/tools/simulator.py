"""An upstream simulator: Anthropic ``/v1/messages`` and OpenAI ``/v1/chat/completions``.

For tests, benchmarks, and users load-testing their own deployment without spending tokens.
It is written on h11 and trio sockets rather than an ASGI server so that it costs little per
event (a benchmark must not measure its own upstream) and can misbehave precisely: cut a
connection after N events, stall, trickle one byte at a time, send an error event.

Behaviour comes from command-line defaults, overridden per request by ``x-sim-*`` headers:

========================  =====================================================================
``x-sim-ttfb``            seconds before the response headers
``x-sim-eps``             text events per second (0: as fast as possible)
``x-sim-events``          number of text deltas
``x-sim-event-bytes``     characters of text per delta
``x-sim-cjk: 1``          Chinese text instead of English
``x-sim-tools``           number of tool calls after the text
``x-sim-status``          answer with this HTTP status and an error body
``x-sim-retry-after``     ``retry-after`` header on error answers
``x-sim-error-after``     after N deltas, an SSE ``overloaded_error`` and the end of the stream
``x-sim-cut-after``       after N deltas, drop the connection
``x-sim-stall-after``     after N deltas, send nothing more (keep the connection open)
``x-sim-trickle: 1``      send the response one byte at a time
``x-sim-no-usage: 1``     leave usage out (the failure of shared/reference/000)
``x-sim-stamp: 1``        start each delta's text with its send time, ``time.time_ns()``, 19 digits
``x-sim-reset-after``     after N deltas, reset the connection (TCP RST)
``x-sim-no-status: 1``    read the request, then close without answering
``x-sim-garbage: 1``      answer 200 ``text/event-stream`` with random bytes
``x-sim-bad-utf8: 1``     text deltas carry invalid UTF-8
``x-sim-huge-event``      after the first delta, one event of this many bytes
``x-sim-context-window``  the model's window: a longer prompt gets the real "prompt too long" 400
``x-sim-tool-name``       the name of the tools called (``read_file``)
``x-sim-tool-input``      their input, a JSON object (``{"path": "notes/<n>.md", "limit": 20}``)
``x-sim-tool-loop: 1``    tools are called only when offered; a turn that ends with their results
                          is answered with text quoting them
``x-sim-reply``           the answer's text, cut into ``x-sim-events`` deltas
``x-sim-finish``          Gemini only: the ``finishReason`` (``SAFETY``, ``MAX_TOKENS``...)
========================  =====================================================================

Besides Anthropic's and OpenAI's paths it speaks Bedrock's (``tools/sim_bedrock.py``), Vertex
AI's (``tools/sim_vertex.py``) and Gemini's (``tools/sim_gemini.py``), with the same options.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import attrs
import h11
import trio

from trio_balancer.errors import InvalidRequest, error_body, error_type_for_status
from trio_balancer.logging import get_logger
from trio_balancer.protocol import events
from trio_balancer.protocol.bedrock import EVENT_STREAM_TYPE
from trio_balancer.protocol.cloud_models import anthropic_model_name
from trio_balancer.protocol.sse import encode_event
from trio_balancer.protocol.tokens import estimate_request
from trio_balancer.protocol.validation import parse_request_body, validate_messages_request
from trio_balancer.tools.sim_bedrock import (
    SIM_AWS_KEYS,
    bedrock_error_answer,
    bedrock_route,
    check_signature,
    sse_to_frame,
)
from trio_balancer.tools.sim_gemini import (
    SIM_GEMINI_SIGNATURE,
    gemini_body_problem,
    gemini_chunk,
    gemini_error_answer,
    gemini_key_problem,
    gemini_route,
    gemini_tool_names,
    gemini_tool_results,
)
from trio_balancer.tools.sim_vertex import check_assertion, google_error_answer, vertex_route

__all__ = ["STAMP_DIGITS", "SimOptions", "Simulator", "serve"]

STAMP_DIGITS = 19
_WORDS = ("stream ", "event ", "balancer ", "trio ", "nursery ", "channel ", "latency ", "provider ")
log = get_logger("trio_balancer.tools.simulator")
_CJK = "流式响应实时转发每个事件到达客户端保持顺序不丢数据"


@attrs.frozen
class SimOptions:
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


class _Cut(Exception):
    """Drop the connection now, mid-response."""


class _Reset(Exception):
    """Reset the connection now (RST), mid-response."""


def _set_linger_zero(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Simulator:
    def __init__(
        self,
        defaults: SimOptions = SimOptions(),
        *,
        windows: Mapping[str, int] | None = None,
        aws_keys: Mapping[str, str] = SIM_AWS_KEYS,
        google_keys: Mapping[str, str] | None = None,
        gemini_keys: Iterable[str] = (),
    ) -> None:
        self.defaults = defaults
        self.windows = dict(windows or {})  # model -> context window, over the default
        self.aws_keys = dict(aws_keys)  # Bedrock: access key id -> secret (tools/sim_bedrock.py)
        self.google_keys = dict(google_keys or {})  # Vertex: service account email -> public PEM
        self.google_tokens: set[str] = set()  # access tokens the token endpoint issued
        self.gemini_keys = frozenset(gemini_keys)  # Gemini: the API keys taken (empty: any)
        self.token_requests = 0
        self.requests = 0
        self.open_connections = 0
        self.active = 0  # responses being sent right now
        self._inactive = trio.Event()
        self._inactive.set()

    async def wait_inactive(self) -> None:
        """Return once no response is being sent (tests check nothing was left streaming)."""
        while not self._inactive.is_set():
            await self._inactive.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read(conn, stream)
                if request is None:
                    return
                self.requests += 1
                method, target, headers, body = request
                self.active += 1
                if self._inactive.is_set():
                    self._inactive = trio.Event()
                try:
                    await self._answer(conn, stream, method, target, headers, body)
                except _Cut:
                    return
                except _Reset:
                    _set_linger_zero(stream)  # close() now sends RST instead of FIN
                    return
                finally:
                    self.active -= 1
                    if not self.active:
                        self._inactive.set()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        except Exception:  # a bug of ours answering one request: that connection ends, not the server
            log.exception("simulator.crash")
            return
        finally:
            self.open_connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[str, str, dict[str, str], bytes] | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and head is None:
                    return None
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                headers = {n.decode().lower(): v.decode("latin-1") for n, v in head.headers}
                return head.method.decode(), head.target.decode(), headers, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, method: str, target: str,
        headers: dict[str, str], body: bytes,
    ) -> None:  # fmt: skip
        path = target.split("?", 1)[0]
        cloud = _cloud_answer(path)
        if cloud is not None:
            return await cloud(self, conn, stream, method, target, headers, body)
        try:
            opts = self.defaults.with_headers(headers)
            payload = _checked_payload(path, body)
        except (ValueError, InvalidRequest) as exc:
            return await self._send(
                conn,
                stream,
                400,
                {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}},
            )
        if opts.ttfb:
            await trio.sleep(opts.ttfb)
        if opts.no_status:
            raise _Cut
        openai = path.endswith("/chat/completions")
        if path.endswith("/models") and method == "GET":
            return await self._send(
                conn,
                stream,
                200,
                {
                    "data": [
                        {
                            "type": "model",
                            "id": "sim-1",
                            "display_name": "sim-1",
                            "created_at": "2026-01-01T00:00:00Z",
                        }
                    ],
                    "has_more": False,
                },
            )
        if path.endswith("/count_tokens"):
            return await self._send(conn, stream, 200, {"input_tokens": estimate_request(payload)})
        if not (openai or path.endswith("/messages")):
            return await self._send(
                conn,
                stream,
                404,
                {"type": "error", "error": {"type": "not_found_error", "message": f"no {path}"}},
            )
        if opts.status != 200:
            extra = [("retry-after", f"{opts.retry_after:g}")] if opts.retry_after is not None else []
            return await self._send(conn, stream, opts.status, _error_answer(opts.status, openai), extra)
        opts = (
            _after_tool_results(opts, _openai_tool_results(payload), _tool_names(payload, openai=True))
            if openai
            else _after_tool_results(opts, _tool_results(payload), _tool_names(payload))
        )
        model = str(payload.get("model") or "sim-1")
        input_tokens = estimate_request(payload)
        window = self.windows.get(model, opts.context_window)
        if window and input_tokens > window:
            return await self._send(conn, stream, 400, _too_long_answer(input_tokens, window, openai))
        if not payload.get("stream"):
            message = (
                _openai_message(opts, model, input_tokens)
                if openai
                else _anthropic_message(opts, model, input_tokens)
            )
            return await self._send(conn, stream, 200, message, trickle=opts.trickle)
        want_usage = not opts.no_usage and (
            not openai or bool((payload.get("stream_options") or {}).get("include_usage"))
        )
        events = (
            _openai_stream(opts, model, input_tokens, want_usage)
            if openai
            else _anthropic_stream(opts, model, input_tokens)
        )
        await self._stream(conn, stream, opts, events)

    async def _stream(
        self, conn: h11.Connection, stream: trio.SocketStream, opts: SimOptions, events: Iterator[Step],
        *, frame: Callable[[bytes], bytes] | None = None, content_type: bytes = b"text/event-stream; charset=utf-8",
    ) -> None:  # fmt: skip
        """Send an event stream, with the pacing and the faults ``opts`` asks for; ``frame``
        re-wraps each SSE event in another wire format (Bedrock's event stream)."""
        headers = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        gap = 1.0 / opts.eps if opts.eps > 0 else 0.0
        if opts.garbage:
            rng = random.Random(7)
            for _ in range(20):
                await stream.send_all(conn.send(h11.Data(data=rng.randbytes(97))))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return
        for kind, data in events:
            if kind == "delta_wait":
                if gap:
                    await trio.sleep(gap)
                continue
            if kind == "cut":
                raise _Cut
            if kind == "reset":
                raise _Reset
            if kind == "stall":
                # Send nothing more, but notice when the client gives up, as a real server would.
                while await stream.receive_some(65536):
                    pass
                raise _Cut
            payload_bytes = data() if callable(data) else data
            if frame is not None:
                payload_bytes = frame(payload_bytes)
                if not payload_bytes:
                    continue
            if opts.trickle:
                for i in range(len(payload_bytes)):
                    await stream.send_all(conn.send(h11.Data(data=payload_bytes[i : i + 1])))
            else:
                await stream.send_all(conn.send(h11.Data(data=payload_bytes)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, payload: Any,
        extra: list[tuple[str, str]] | None = None, *, trickle: bool = False,
    ) -> None:  # fmt: skip
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(n.encode(), v.encode()) for n, v in extra or []]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        if trickle:
            for i in range(len(body)):
                await stream.send_all(conn.send(h11.Data(data=body[i : i + 1])))
        else:
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


def _checked_payload(path: str, body: bytes) -> dict[str, Any]:
    """The request body as the simulator reads it: checked like the balancer checks its own."""
    if not body:
        return {}
    payload = parse_request_body(body)
    if path.endswith(("/messages", "/count_tokens")):
        validate_messages_request(payload)
    elif path.endswith("/chat/completions"):
        messages = payload.get("messages", [])
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("messages: must be a list of objects")
        options = payload.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("stream_options: must be an object")
    return payload


def _text(opts: SimOptions, i: int) -> str:
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


def _error_answer(status: int, openai: bool) -> dict[str, Any]:
    """A simulated HTTP error's body, in the provider kind's own shape."""
    message = f"simulated HTTP {status}"
    if openai:
        return {"error": {"message": message, "type": "server_error", "code": str(status)}}
    return {"type": "error", "error": {"type": error_type_for_status(status), "message": message}}


def _too_long_answer(tokens: int, window: int, openai: bool) -> dict[str, Any]:
    """The provider kind's real answer to a prompt longer than the window (its wording)."""
    if openai:
        message = (
            f"This model's maximum context length is {window} tokens. However, your messages"
            f" resulted in {tokens} tokens. Please reduce the length of the messages."
        )
        error = {"message": message, "type": "invalid_request_error", "param": "messages"}
        return {"error": {**error, "code": "context_length_exceeded"}}
    message = f"prompt is too long: {tokens} tokens > {window} maximum"
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def _delta_text(opts: SimOptions, i: int) -> str:
    text = _text(opts, i)
    return f"{time.time_ns():0{STAMP_DIGITS}d} {text}" if opts.stamp else text


def _anthropic_delta(opts: SimOptions, i: int) -> bytes:
    delta = {"type": "text_delta", "text": _delta_text(opts, i)}
    wire = events.encode(events.content_block_delta(0, delta))
    if opts.bad_utf8:
        wire = wire.replace(b'"text":"', b'"text":"\xff\xfe', 1)
    return wire


def _tool_input(opts: SimOptions, t: int) -> dict[str, Any]:
    """The input of the ``t``-th tool call: ``x-sim-tool-input``, else a file to read."""
    if opts.tool_input:
        try:
            given = json.loads(opts.tool_input)
        except ValueError:
            given = None
        if isinstance(given, dict):
            return given
    return {"path": f"notes/{t}.md", "limit": 20}


def _tool_results(payload: Mapping[str, Any]) -> str | None:
    """The text of the tool results an Anthropic request's last message carries, else None."""
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    results = (
        [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if isinstance(content, list)
        else []
    )
    if not results:
        return None
    texts = []
    for result in results:
        inner = result.get("content")
        if isinstance(inner, str):
            texts.append(inner)
        elif isinstance(inner, list):
            texts += [
                str(b.get("text", "")) for b in inner if isinstance(b, dict) and b.get("type") == "text"
            ]
    return "\n".join(texts)


def _tool_names(payload: Mapping[str, Any], *, openai: bool = False) -> list[str]:
    """The names of the tools a request offers (OpenAI's under ``function``)."""
    tools = payload.get("tools")
    out = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict):
            named = tool.get("function") if openai else tool
            if isinstance(named, dict) and isinstance(named.get("name"), str):
                out.append(named["name"])
    return out


def _openai_tool_results(payload: Mapping[str, Any]) -> str | None:
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "tool":
        return None
    content = last.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def _after_tool_results(opts: SimOptions, results: str | None, offered: Iterable[str] = ()) -> SimOptions:
    """With ``tool_loop``, the tool is called only if the request offers it by name (a real
    model calls nothing else: Claude Code's background calls offer none), and a turn
    answering tool calls ends the loop with text quoting the results."""
    if not opts.tool_loop:
        return opts
    if results is None:
        return opts if opts.tool_name in set(offered) else attrs.evolve(opts, tools=0)
    quoted = " ".join(results.split())[:400]
    return attrs.evolve(opts, tools=0, reply=f"The tool said: {quoted}", events=min(opts.events, 4) or 1)


def _output_tokens(opts: SimOptions) -> int:
    per = opts.event_bytes if opts.cjk else max(1, opts.event_bytes // 4)
    return opts.events * per + opts.tools * 12


def _faults(opts: SimOptions, sent: int) -> str | None:
    if opts.cut_after is not None and sent >= opts.cut_after:
        return "cut"
    if opts.reset_after is not None and sent >= opts.reset_after:
        return "reset"
    if opts.stall_after is not None and sent >= opts.stall_after:
        return "stall"
    if opts.error_after is not None and sent >= opts.error_after:
        return "error"
    return None


Step = tuple[str, Any]


def _deltas(opts: SimOptions, error_event: bytes) -> Iterator[Step]:
    """The steps of the paced text deltas, for every dialect: ``("delta", i)`` for each, the
    waits and faults asked for between them; an error fault is ``error_event`` then
    ``("ended", None)``, after which the stream must end."""
    for i in range(opts.events + 1):
        fault = _faults(opts, i)
        if fault == "error":
            yield "event", error_event
            yield "ended", None
            return
        if fault:
            yield fault, None
        if i == opts.events:
            return
        if i:
            yield "delta_wait", None
        yield "delta", i


def _anthropic_stream(opts: SimOptions, model: str, input_tokens: int) -> Iterator[Step]:
    start: dict[str, Any] = {"id": f"msg_sim_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
                             "content": [], "stop_reason": None, "stop_sequence": None}  # fmt: skip
    if not opts.no_usage:
        start["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
    overloaded = error_body("overloaded_error", "Overloaded (simulated)").decode()
    yield "event", events.encode(events.message_start(start))
    yield "event", events.encode(events.content_block_start(0, {"type": "text", "text": ""}))
    yield "event", events.PING
    for kind, i in _deltas(opts, encode_event("error", overloaded)):
        if kind == "ended":
            return
        if kind != "delta":
            yield kind, i
            continue
        yield "event", partial(_anthropic_delta, opts, i)
        if i == 0 and opts.huge_event:
            yield "event", b"event: content_block_delta\ndata: " + b"A" * opts.huge_event + b"\n\n"
    yield "event", events.encode(events.content_block_stop(0))
    for t in range(opts.tools):
        yield from _anthropic_tool_call(opts, t + 1, t)
    stop = {"stop_reason": "tool_use" if opts.tools else "end_turn", "stop_sequence": None}
    usage = None if opts.no_usage else {"output_tokens": _output_tokens(opts)}
    yield "event", events.encode(events.message_delta(stop, usage))
    yield "event", events.encode(events.message_stop())


def _anthropic_tool_call(opts: SimOptions, index: int, t: int) -> Iterator[Step]:
    block = {"type": "tool_use", "id": f"toolu_sim_{t}", "name": opts.tool_name, "input": {}}
    yield "event", events.encode(events.content_block_start(index, block))
    args = json.dumps(_tool_input(opts, t))
    for part in (args[:10], args[10:]):
        delta = {"type": "input_json_delta", "partial_json": part}
        yield "event", events.encode(events.content_block_delta(index, delta))
    yield "event", events.encode(events.content_block_stop(index))


def _openai_stream(opts: SimOptions, model: str, input_tokens: int, usage: bool) -> Iterator[Step]:
    cid = f"chatcmpl-sim{uuid.uuid4().hex[:16]}"

    def chunk(
        delta: dict[str, Any] | None, finish: str | None = None, extra: dict[str, Any] | None = None
    ) -> bytes:
        payload: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                                   "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        payload.update(extra or {})
        return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

    yield "event", chunk({"role": "assistant", "content": ""})
    for i in range(opts.events):
        fault = _faults(opts, i)
        if fault == "error":
            yield (
                "event",
                f"data: {json.dumps({'error': {'message': 'Overloaded (simulated)', 'type': 'server_error', 'code': 'server_overloaded'}})}\n\n".encode(),
            )
            return
        if fault:
            yield fault, None
        if i:
            yield "delta_wait", None
        yield "event", partial(lambda k: chunk({"content": _delta_text(opts, k)}), i)
    for t in range(opts.tools):
        args = json.dumps(_tool_input(opts, t))
        yield (
            "event",
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": t,
                            "id": f"call_sim_{t}",
                            "type": "function",
                            "function": {"name": opts.tool_name, "arguments": args[:10]},
                        }
                    ]
                }
            ),
        )
        yield "event", chunk({"tool_calls": [{"index": t, "function": {"arguments": args[10:]}}]})
    yield "event", chunk({}, "tool_calls" if opts.tools else "stop")
    if usage:
        yield (
            "event",
            chunk(
                None,
                extra={
                    "usage": {
                        "prompt_tokens": input_tokens,
                        "completion_tokens": _output_tokens(opts),
                        "total_tokens": input_tokens + _output_tokens(opts),
                    }
                },
            ),
        )
    yield "event", b"data: [DONE]\n\n"


def _anthropic_message(opts: SimOptions, model: str, input_tokens: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "".join(_text(opts, i) for i in range(opts.events))}
    ]
    content += [
        {
            "type": "tool_use",
            "id": f"toolu_sim_{t}",
            "name": opts.tool_name,
            "input": _tool_input(opts, t),
        }
        for t in range(opts.tools)
    ]
    message: dict[str, Any] = {"id": f"msg_sim_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model, "content": content,
                               "stop_reason": "tool_use" if opts.tools else "end_turn", "stop_sequence": None}  # fmt: skip
    if not opts.no_usage:
        message["usage"] = {"input_tokens": input_tokens, "output_tokens": _output_tokens(opts)}
    return message


def _openai_message(opts: SimOptions, model: str, input_tokens: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(_text(opts, i) for i in range(opts.events)),
    }
    if opts.tools:
        message["tool_calls"] = [
            {
                "id": f"call_sim_{t}",
                "type": "function",
                "function": {
                    "name": opts.tool_name,
                    "arguments": json.dumps(_tool_input(opts, t)),
                },
            }
            for t in range(opts.tools)
        ]
    out: dict[str, Any] = {"id": f"chatcmpl-sim{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if opts.tools else "stop"}]}  # fmt: skip
    if not opts.no_usage:
        out["usage"] = {
            "prompt_tokens": input_tokens,
            "completion_tokens": _output_tokens(opts),
            "total_tokens": input_tokens + _output_tokens(opts),
        }
    return out


# -- the cloud dialects (tools/sim_bedrock.py, tools/sim_vertex.py, tools/sim_gemini.py) ---

CloudAnswer = Callable[
    ["Simulator", h11.Connection, trio.SocketStream, str, str, dict[str, str], bytes], Awaitable[None]
]


def _cloud_answer(path: str) -> CloudAnswer | None:
    """The handler of a cloud's path, or None for Anthropic's and OpenAI's."""
    if bedrock_route(path) is not None:
        return _bedrock_answer
    if path == "/token":
        return _token_answer
    if vertex_route(path) is not None or path.endswith("/models/count-tokens:rawPredict"):
        return _vertex_answer
    if gemini_route(path) is not None:
        return _gemini_answer
    return None


def _json_body(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def _bedrock_answer(
    sim: Simulator, conn: h11.Connection, stream: trio.SocketStream, method: str, target: str,
    headers: dict[str, str], body: bytes,
) -> None:  # fmt: skip
    """InvokeModel[WithResponseStream] and CountTokens, signed, as Bedrock answers them."""
    model_id, action = bedrock_route(target.split("?", 1)[0]) or ("", "")
    request_id = [("x-amzn-requestid", str(uuid.uuid4()))]
    problem = check_signature(method, target, headers, body, sim.aws_keys)
    if problem is not None:
        name = "UnrecognizedClientException" if "token" in problem.lower() else "InvalidSignatureException"
        return await sim._send(
            conn, stream, 403, {"message": problem}, [("x-amzn-errortype", name), *request_id]
        )
    opts = sim.defaults.with_headers(headers)
    if opts.ttfb:
        await trio.sleep(opts.ttfb)
    if opts.status != 200:
        extra, error = bedrock_error_answer(opts.status)
        return await sim._send(conn, stream, opts.status, error, extra + request_id)
    payload = _json_body(body)
    if action == "count-tokens":
        try:
            assert payload is not None
            payload = json.loads(base64.b64decode(payload["input"]["invokeModel"]["body"]))
        except (AssertionError, KeyError, TypeError, ValueError):
            payload = None
    wrong = "body is not JSON" if payload is None else _bedrock_body_problem(payload)
    if wrong is not None:
        extra = [("x-amzn-errortype", "ValidationException"), *request_id]
        return await sim._send(conn, stream, 400, {"message": f"Malformed input request: {wrong}"}, extra)
    assert payload is not None
    input_tokens = estimate_request(payload)
    opts = _after_tool_results(opts, _tool_results(payload), _tool_names(payload))
    if action == "count-tokens":
        return await sim._send(conn, stream, 200, {"inputTokens": input_tokens}, request_id)
    model = anthropic_model_name(model_id)
    if action == "invoke":
        message = _anthropic_message(opts, model, input_tokens)
        return await sim._send(conn, stream, 200, message, request_id, trickle=opts.trickle)
    metrics = {"inputTokenCount": input_tokens, "outputTokenCount": _output_tokens(opts),
               "invocationLatency": 1, "firstByteLatency": 1}  # fmt: skip
    await sim._stream(
        conn, stream, opts, _anthropic_stream(opts, model, input_tokens),
        frame=partial(sse_to_frame, invocation=metrics), content_type=EVENT_STREAM_TYPE.encode(),
    )  # fmt: skip


def _bedrock_body_problem(payload: Mapping[str, Any]) -> str | None:
    if payload.get("anthropic_version") != "bedrock-2023-05-31":
        return "anthropic_version: must be bedrock-2023-05-31"
    for field in ("model", "stream"):
        if field in payload:
            return f"extraneous key [{field}] is not permitted"
    try:
        validate_messages_request({**payload, "model": "bedrock"})
    except InvalidRequest as exc:
        return str(exc)
    return None


async def _token_answer(
    sim: Simulator, conn: h11.Connection, stream: trio.SocketStream, method: str, target: str,
    headers: dict[str, str], body: bytes,
) -> None:  # fmt: skip
    """The OAuth token endpoint a service account's JWT assertion is exchanged at."""
    sim.token_requests += 1
    audience = f"http://{headers.get('host', '')}/token"
    answer, problem = check_assertion(body, sim.google_keys, audience)
    if answer is None:
        return await sim._send(
            conn, stream, 400, {"error": problem.split(":")[0], "error_description": problem}
        )
    sim.google_tokens.add(answer["access_token"])
    await sim._send(conn, stream, 200, answer)


async def _vertex_answer(
    sim: Simulator, conn: h11.Connection, stream: trio.SocketStream, method: str, target: str,
    headers: dict[str, str], body: bytes,
) -> None:  # fmt: skip
    """rawPredict / streamRawPredict / count-tokens, with a token the endpoint issued."""
    path = target.split("?", 1)[0]
    bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
    if sim.google_keys and bearer not in sim.google_tokens:
        return await sim._send(conn, stream, 401, google_error_answer(401))
    opts = sim.defaults.with_headers(headers)
    if opts.ttfb:
        await trio.sleep(opts.ttfb)
    if opts.status != 200:
        if opts.status == 529:  # the model's own overload: Anthropic's shape, as Vertex relays it
            return await sim._send(conn, stream, 529, _error_answer(529, False))
        extra = [("retry-after", f"{opts.retry_after:g}")] if opts.retry_after is not None else []
        return await sim._send(conn, stream, opts.status, google_error_answer(opts.status), extra)
    payload = _json_body(body)
    route = vertex_route(path)
    counting = path.endswith("/models/count-tokens:rawPredict")
    problem = "body is not JSON" if payload is None else _vertex_body_problem(payload, counting=counting)
    if problem is not None:
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
        return await sim._send(conn, stream, 400, error)
    assert payload is not None
    input_tokens = estimate_request(payload)
    opts = _after_tool_results(opts, _tool_results(payload), _tool_names(payload))
    if counting:
        return await sim._send(conn, stream, 200, {"input_tokens": input_tokens})
    assert route is not None
    model = anthropic_model_name(route[2])
    if route[3] == "rawPredict" or not payload.get("stream"):
        message = _anthropic_message(opts, model, input_tokens)
        return await sim._send(conn, stream, 200, message, trickle=opts.trickle)
    await sim._stream(conn, stream, opts, _anthropic_stream(opts, model, input_tokens))


def _vertex_body_problem(payload: Mapping[str, Any], *, counting: bool) -> str | None:
    if payload.get("anthropic_version") != "vertex-2023-10-16":
        return "anthropic_version: must be vertex-2023-10-16"
    if "model" in payload and not counting:
        return "model: Extra inputs are not permitted"
    try:
        validate_messages_request({"model": "vertex", **payload})
    except InvalidRequest as exc:
        return str(exc)
    return None


async def _gemini_answer(
    sim: Simulator, conn: h11.Connection, stream: trio.SocketStream, method: str, target: str,
    headers: dict[str, str], body: bytes,
) -> None:  # fmt: skip
    """generateContent / streamGenerateContent / countTokens, with an API key, as Gemini answers."""
    path, _, query = target.partition("?")
    model, action = gemini_route(path) or ("", "")
    key = headers.get("x-goog-api-key") or (parse_qs(query).get("key") or [""])[0]
    refused = gemini_key_problem(key, sim.gemini_keys)
    if refused is not None:
        return await sim._send(conn, stream, refused[0], refused[1])
    opts = sim.defaults.with_headers(headers)
    if opts.ttfb:
        await trio.sleep(opts.ttfb)
    if opts.status != 200:
        extra = [("retry-after", f"{opts.retry_after:g}")] if opts.retry_after is not None else []
        return await sim._send(conn, stream, opts.status, gemini_error_answer(opts.status), extra)
    payload = _json_body(body)
    problem = gemini_body_problem(payload, model, counting=action == "countTokens")
    if problem is not None:
        return await sim._send(conn, stream, 400, gemini_error_answer(400, problem))
    assert payload is not None
    request = payload.get("generateContentRequest", payload) if action == "countTokens" else payload
    input_tokens = max(1, len(json.dumps(request, ensure_ascii=False)) // 4)
    if action == "countTokens":
        return await sim._send(conn, stream, 200, {"totalTokens": input_tokens})
    opts = _after_tool_results(opts, gemini_tool_results(payload), gemini_tool_names(payload))
    thinking = bool(
        ((payload.get("generationConfig") or {}).get("thinkingConfig") or {}).get("includeThoughts")
    )
    chunks = _gemini_stream(opts, model, input_tokens, thinking=thinking)
    if action == "generateContent":
        return await sim._send(conn, stream, 200, _gemini_message(chunks), trickle=opts.trickle)
    await sim._stream(conn, stream, opts, chunks)


def _gemini_stream(opts: SimOptions, model: str, input_tokens: int, *, thinking: bool) -> Iterator[Step]:
    """Gemini's chunks: [a thought], one text part per delta, the calls together, the finish.

    After thinking (and always on ``gemini-3*``, which signs every first call) the first part
    made carries a ``thoughtSignature`` that a next turn must give back.
    """
    rid = f"sim-{uuid.uuid4().hex[:12]}"
    usage = {"promptTokenCount": input_tokens, "candidatesTokenCount": 0}
    if thinking:
        usage["thoughtsTokenCount"] = 12
    signature = thinking or model.startswith("gemini-3")

    def chunk(parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        if opts.no_usage:
            data = gemini_chunk(parts, model=model, response_id=rid, usage={}, finish=finish)
            data.pop("usageMetadata")
        else:
            data = gemini_chunk(parts, model=model, response_id=rid, usage=usage, finish=finish)
        return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\r\n\r\n"

    if thinking:
        yield (
            "event",
            chunk([{"text": "**Reading the request** The user wants the next step.", "thought": True}]),
        )
    per = max(1, _output_tokens(attrs.evolve(opts, tools=0)) // max(1, opts.events))
    error = b"data: " + json.dumps(gemini_error_answer(503)).encode() + b"\r\n\r\n"
    for kind, i in _deltas(opts, error):
        if kind == "ended":
            return
        if kind != "delta":
            yield kind, i
            continue
        part: dict[str, Any] = {"text": _delta_text(opts, i)}
        if signature and i == 0 and not opts.tools:
            part["thoughtSignature"] = SIM_GEMINI_SIGNATURE
        usage["candidatesTokenCount"] += per
        yield "event", chunk([part])
    calls: list[dict[str, Any]] = []
    for t in range(opts.tools):
        call: dict[str, Any] = {"name": opts.tool_name, "args": _tool_input(opts, t)}
        if model.startswith("gemini-3"):
            call["id"] = f"call_sim_{t}"
        calls.append({"functionCall": call})
    if calls and signature:
        calls[0]["thoughtSignature"] = SIM_GEMINI_SIGNATURE
    usage["candidatesTokenCount"] += 12 * len(calls)
    yield "event", chunk(calls, opts.finish or "STOP")


def _gemini_message(chunks: Iterator[Step]) -> dict[str, Any]:
    """The whole answer of ``generateContent``: the stream's parts in one response."""
    parts: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for kind, data in chunks:
        if kind != "event":
            continue
        raw = data() if callable(data) else data
        last = json.loads(raw.removeprefix(b"data: "))
        if "error" in last:
            return last
        parts += last["candidates"][0]["content"]["parts"]
    last["candidates"][0]["content"]["parts"] = parts
    return last


async def serve(
    simulator: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status`` reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(simulator.handle, listeners, handler_nursery=nursery)
