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
                          (in the dialect's words; a token count is never refused)
``x-sim-tool-name``       the name of the tools called (``read_file``)
``x-sim-tool-input``      their input, a JSON object (``{"path": "notes/<n>.md", "limit": 20}``)
``x-sim-tool-loop: 1``    tools are called only when offered; a turn that ends with their results
                          is answered with text quoting them
``x-sim-reply``           the answer's text, cut into ``x-sim-events`` deltas
``x-sim-finish``          Gemini only: the ``finishReason`` (``SAFETY``, ``MAX_TOKENS``...)
========================  =====================================================================

Besides Anthropic's and OpenAI's paths it speaks Bedrock's (``tools/sim_bedrock.py``), Vertex
AI's (``tools/sim_vertex.py``) and Gemini's (``tools/sim_gemini.py``), with the same options:
every dialect takes every fault, said in its own wire shape. What they share (the options, the
request-level fault preamble, the paced deltas and their faults) is in ``tools/sim_common.py``,
Anthropic's body shapes in ``tools/sim_anthropic.py``; this module is the server, its routing,
and Anthropic's and OpenAI's own paths.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import h11
import trio

from trio_balancer.errors import InvalidRequest
from trio_balancer.logging import get_logger
from trio_balancer.protocol.tokens import estimate_request
from trio_balancer.protocol.validation import parse_request_body, validate_messages_request
from trio_balancer.tools.sim_anthropic import (
    ANTHROPIC_FAULTS,
    anthropic_message,
    anthropic_stream,
    tool_names,
    tool_results,
)
from trio_balancer.tools.sim_bedrock import SIM_AWS_KEYS, bedrock_answer, bedrock_route
from trio_balancer.tools.sim_common import (
    STAMP_DIGITS,
    Cut,
    Exchange,
    FaultShape,
    Header,
    Request,
    Reset,
    SimOptions,
    SimState,
    Step,
    StreamShape,
    after_tool_results,
    delta_text,
    fault_preamble,
    output_tokens,
    paced_deltas,
    text,
    tool_input,
)
from trio_balancer.tools.sim_gemini import gemini_answer, gemini_route
from trio_balancer.tools.sim_vertex import is_vertex_path, token_answer, vertex_answer

__all__ = ["STAMP_DIGITS", "SimOptions", "Simulator", "serve"]

log = get_logger("trio_balancer.tools.simulator")
_DEFAULTS = SimOptions()


def _set_linger_zero(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Simulator:
    def __init__(
        self,
        defaults: SimOptions = _DEFAULTS,
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
                    await self._answer(Exchange(conn, stream), Request(method, target, headers, body))
                except Cut:
                    return
                except Reset:
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

    async def _answer(self, ex: Exchange, request: Request) -> None:
        cloud = _cloud_answer(request.path)
        if cloud is not None:
            return await cloud(self, ex, request)
        path = request.path
        try:
            opts = self.defaults.with_headers(request.headers)
            payload = _checked_payload(path, request.body)
        except (ValueError, InvalidRequest) as exc:
            error = {"type": "invalid_request_error", "message": str(exc)}
            return await ex.send(400, {"type": "error", "error": error})
        openai = path.endswith("/chat/completions")
        if path.endswith("/models") and request.method == "GET":
            return await ex.send(200, _MODELS)
        if not (openai or path.endswith(("/messages", "/count_tokens"))):
            error = {"type": "not_found_error", "message": f"no {path}"}
            return await ex.send(404, {"type": "error", "error": error})
        counting = path.endswith("/count_tokens")
        model = str(payload.get("model") or "sim-1")
        input_tokens = estimate_request(payload)
        window = 0 if counting else self.windows.get(model, opts.context_window)
        shape = _OPENAI_FAULTS if openai else ANTHROPIC_FAULTS
        if await fault_preamble(ex, opts, shape, input_tokens=input_tokens, window=window):
            return
        if counting:
            return await ex.send(200, {"input_tokens": input_tokens})
        opts = (
            after_tool_results(opts, _openai_tool_results(payload), tool_names(payload, openai=True))
            if openai
            else after_tool_results(opts, tool_results(payload), tool_names(payload))
        )
        if not payload.get("stream"):
            message = (
                _openai_message(opts, model, input_tokens)
                if openai
                else anthropic_message(opts, model, input_tokens)
            )
            return await ex.send(200, message, trickle=opts.trickle)
        if openai:
            include = bool((payload.get("stream_options") or {}).get("include_usage"))
            steps = _openai_stream(opts, model, input_tokens, not opts.no_usage and include)
        else:
            steps = anthropic_stream(opts, model, input_tokens)
        await ex.send_stream(opts, steps)


CloudAnswer = Callable[[SimState, Exchange, Request], Awaitable[None]]


def _cloud_answer(path: str) -> CloudAnswer | None:
    """The handler of a cloud's path, or None for Anthropic's and OpenAI's."""
    if bedrock_route(path) is not None:
        return bedrock_answer
    if path == "/token":
        return token_answer
    if is_vertex_path(path):
        return vertex_answer
    if gemini_route(path) is not None:
        return gemini_answer
    return None


_MODELS = {
    "data": [{"type": "model", "id": "sim-1", "display_name": "sim-1", "created_at": "2026-01-01T00:00:00Z"}],
    "has_more": False,
}


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


# -- OpenAI's dialect -----------------------------------------------------------------------


def _openai_error(status: int) -> tuple[list[Header], Any]:
    """A simulated HTTP error in OpenAI's shape."""
    return [], {"error": {"message": f"simulated HTTP {status}", "type": "server_error", "code": str(status)}}


def _openai_too_long(tokens: int, window: int) -> tuple[int, list[Header], Any]:
    """OpenAI's real answer to a prompt longer than the window (its wording)."""
    message = (
        f"This model's maximum context length is {window} tokens. However, your messages"
        f" resulted in {tokens} tokens. Please reduce the length of the messages."
    )
    error = {"message": message, "type": "invalid_request_error", "param": "messages"}
    return 400, [], {"error": {**error, "code": "context_length_exceeded"}}


_OPENAI_FAULTS = FaultShape(error=_openai_error, too_long=_openai_too_long)
_OVERLOADED = {
    "error": {"message": "Overloaded (simulated)", "type": "server_error", "code": "server_overloaded"}
}
_OPENAI_STREAM = StreamShape(
    error_event=f"data: {json.dumps(_OVERLOADED)}\n\n".encode(), event=lambda data: b"data: " + data + b"\n\n"
)


def _openai_tool_results(payload: Mapping[str, Any]) -> str | None:
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "tool":
        return None
    content = last.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def _openai_usage(opts: SimOptions, input_tokens: int) -> dict[str, int]:
    out = output_tokens(opts)
    return {"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out}


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
    if (yield from paced_deltas(opts, _OPENAI_STREAM, lambda i: chunk({"content": delta_text(opts, i)}))):
        return
    for t in range(opts.tools):
        args = json.dumps(tool_input(opts, t))
        call = {"index": t, "id": f"call_sim_{t}", "type": "function",
                "function": {"name": opts.tool_name, "arguments": args[:10]}}  # fmt: skip
        yield "event", chunk({"tool_calls": [call]})
        yield "event", chunk({"tool_calls": [{"index": t, "function": {"arguments": args[10:]}}]})
    yield "event", chunk({}, "tool_calls" if opts.tools else "stop")
    if usage:
        yield "event", chunk(None, extra={"usage": _openai_usage(opts, input_tokens)})
    yield "event", b"data: [DONE]\n\n"


def _openai_message(opts: SimOptions, model: str, input_tokens: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text(opts, i) for i in range(opts.events)),
    }
    if opts.tools:
        message["tool_calls"] = [
            {
                "id": f"call_sim_{t}",
                "type": "function",
                "function": {"name": opts.tool_name, "arguments": json.dumps(tool_input(opts, t))},
            }
            for t in range(opts.tools)
        ]
    out: dict[str, Any] = {"id": f"chatcmpl-sim{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if opts.tools else "stop"}]}  # fmt: skip
    if not opts.no_usage:
        out["usage"] = _openai_usage(opts, input_tokens)
    return out


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
