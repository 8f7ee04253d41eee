"""Fake providers, and what real ones send.

``FakeUpstream`` is a scripted provider on 127.0.0.1, written on h11 + trio for byte-level
control. Each test scripts the replies: status, headers, and a list of steps (bytes to send as
one chunk, a float to sleep, ``CUT`` to drop the connection mid-body, ``HANG`` to never answer,
a ``Pause`` to wait until the test lets it go on). The fake records every request it received
and notices at once when the balancer closes the connection, so tests can assert that a
cancelled stream really released its upstream. Tests order themselves on what the fake saw
(``wait_received``, ``Pause.wait_reached``), never on a sleep.

``BigAnswers`` streams answers too big to hold; ``PacedStream`` and ``mock_providers`` are
in-memory providers (``httpx.MockTransport``) for flights on trio's MockClock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any

import attrs
import h11
import httpx
import trio

from trio_balancer.config import Config, parse_config
from trio_balancer.policy.routing import Router
from trio_balancer.upstream.providers import Registry

CUT = object()  # close the socket mid-response, without ending the chunked body
HANG = object()  # never send anything more (until the peer leaves)


@attrs.define(eq=False)
class Pause:
    """A reply step: the fake stops there until the test calls ``release()``.

    ``reached`` is set when a reply gets to the step, so the test knows the provider is mid-
    answer, with everything before the pause on the wire, without guessing with a sleep. One
    Pause may sit in several replies: the first to get there sets ``reached``, one release lets
    them all go on. A Pause never released is a ``HANG`` the test can watch.
    """

    reached: trio.Event = attrs.Factory(trio.Event)
    released: trio.Event = attrs.Factory(trio.Event)

    def release(self) -> None:
        self.released.set()

    async def wait_reached(self, limit: float = 5) -> None:
        with trio.fail_after(limit):
            await self.reached.wait()


Step = bytes | float | Pause | object

SSE_HEADERS = [("content-type", "text/event-stream")]
JSON_HEADERS = [("content-type", "application/json")]


@attrs.define
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = attrs.Factory(lambda: list(SSE_HEADERS))
    steps: Sequence[Step] = ()
    hang_before_headers: bool = False


@attrs.define(eq=False)
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    disconnected: trio.Event = attrs.Factory(trio.Event)
    finished: trio.Event = attrs.Factory(trio.Event)  # the reply was sent to the end

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class FakeUpstream:
    def __init__(self, replies: Callable[[Received], Reply] | Iterable[Reply] | Reply | None = None) -> None:
        self._script: Callable[[Received], Reply] = lambda _r: Reply(steps=[])
        if replies is not None:
            self.script(replies)
        self.received: list[Received] = []
        self._arrived = trio.Event()  # set (and replaced) each time a request arrives
        self.open_connections = 0
        self._no_connections = trio.Event()
        self._no_connections.set()
        self.port = 0

    def script(self, replies: Callable[[Received], Reply] | Iterable[Reply] | Reply) -> None:
        if isinstance(replies, Reply):
            self._script = lambda _r, reply=replies: reply
        elif callable(replies):
            self._script = replies
        else:
            queue = list(replies)
            self._script = lambda _r: queue.pop(0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> FakeUpstream:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def wait_received(self, count: int, limit: float = 5) -> None:
        """Return once ``count`` requests in all have reached us (each read to its end)."""
        with trio.fail_after(limit):
            while len(self.received) < count:
                await self._arrived.wait()

    async def wait_no_connections(self) -> None:
        """Return once every connection the balancer opened to us is closed."""
        with trio.fail_after(5):
            while not self._no_connections.is_set():
                await self._no_connections.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        if self._no_connections.is_set():
            self._no_connections = trio.Event()
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                received = await self._read_request(conn, stream)
                if received is None:
                    return
                self.received.append(received)
                self._arrived.set()
                self._arrived = trio.Event()
                reply = self._script(received)
                keep = await self._respond(conn, stream, received, reply)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self._no_connections.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> Received | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return Received(
                    method=request.method.decode(),
                    target=request.target.decode(),
                    headers=[(n.decode().lower(), v.decode("latin-1")) for n, v in request.headers],
                    body=bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, received: Received, reply: Reply
    ) -> bool:
        """Send ``reply``; False when the connection must not be reused."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peer, stream, received, nursery.cancel_scope)
            keep = False  # stays False if the watcher cancels us: the peer left
            try:
                keep = await self._send_reply(conn, stream, reply, received)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                received.disconnected.set()  # the balancer reset the connection: it left
                keep = False
            nursery.cancel_scope.cancel()
        return keep and not received.disconnected.is_set()

    async def _send_reply(
        self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply, received: Received
    ) -> bool:
        """The reply's steps; False after a deliberate cut."""
        if reply.hang_before_headers:
            await trio.sleep_forever()
        headers = [(n.encode(), v.encode()) for n, v in reply.headers]
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        for step in reply.steps:
            if isinstance(step, bytes):
                await stream.send_all(conn.send(h11.Data(data=step)))
            elif isinstance(step, float | int):
                await trio.sleep(step)
            elif isinstance(step, Pause):
                step.reached.set()
                await step.released.wait()
            elif step is CUT:
                return False
            elif step is HANG:
                await trio.sleep_forever()
        await stream.send_all(conn.send(h11.EndOfMessage()))
        received.finished.set()
        return True

    async def _watch_peer(
        self, stream: trio.SocketStream, received: Received, scope: trio.CancelScope
    ) -> None:
        """EOF from the balancer while we answer: it cancelled the request."""
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            received.disconnected.set()
            scope.cancel()


# -- Anthropic stream builders ------------------------------------------------------------------


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def anthropic_text_events(
    texts: Sequence[str],
    *,
    model: str = "claude-sonnet-4-6",
    message_id: str = "msg_fake_0001",
    input_tokens: int = 12,
    usage: bool = True,
) -> list[bytes]:
    """A realistic Anthropic text stream, one element per SSE event."""
    start_usage = {"input_tokens": input_tokens, "output_tokens": 1} if usage else None
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if start_usage is not None:
        message["usage"] = start_usage
    events = [
        sse("message_start", {"type": "message_start", "message": message}),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        sse("ping", {"type": "ping"}),
    ]
    for text in texts:
        events.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            )
        )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if usage:
        delta["usage"] = {"output_tokens": max(1, sum(len(t) for t in texts) // 4)}
    events.append(sse("message_delta", delta))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def anthropic_message(text: str, *, model: str = "claude-sonnet-4-6") -> dict[str, Any]:
    return {
        "id": "msg_fake_json",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": max(1, len(text) // 4)},
    }


def error_payload(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error body: what a provider answers, and what the balancer answers with."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def anthropic_error(error_type: str, message: str) -> bytes:
    """The error body as Anthropic writes it on the wire (compact JSON)."""
    return json.dumps(error_payload(error_type, message), separators=(",", ":")).encode()


def error_reply(status: int, error_type: str, message: str = "x", **headers: str) -> Reply:
    """A provider refusing with an Anthropic error body; ``headers`` adds e.g. retry-after."""
    return Reply(
        status=status, headers=[*JSON_HEADERS, *headers.items()], steps=[anthropic_error(error_type, message)]
    )


def interleave(events: Sequence[bytes], gap: float) -> list[Step]:
    steps: list[Step] = []
    for i, e in enumerate(events):
        if i:
            steps.append(gap)
        steps.append(e)
    return steps


# -- OpenAI stream builders ---------------------------------------------------------------------


def oai(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def oai_chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
    cid: str = "chatcmpl-1",
) -> bytes:
    choices = (
        []
        if delta is None and finish is None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    )
    payload: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": choices,
    }
    if usage is not None:
        payload["usage"] = usage
    return oai(payload)


OAI_DONE = b"data: [DONE]\n\n"
OAI_USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 9,
    "total_tokens": 129,
    "prompt_tokens_details": {"cached_tokens": 100},
}


def openai_text_stream(
    texts: Sequence[str], *, usage: dict[str, Any] | None = OAI_USAGE, done: bool = True
) -> list[bytes]:
    out = [oai_chunk({"role": "assistant", "content": ""})]
    out += [oai_chunk({"content": t}) for t in texts]
    out.append(oai_chunk({}, "stop"))
    if usage is not None:
        out.append(oai_chunk(usage=usage))
    if done:
        out.append(OAI_DONE)
    return out


def openai_tool_stream(
    name: str, arguments: str, *, text: str = "", call_id: str = "call_abc", pieces: int = 4
) -> list[bytes]:
    out = [oai_chunk({"role": "assistant", "content": None})]
    if text:
        out.append(oai_chunk({"content": text}))
    out.append(
        oai_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        )
    )
    step = max(1, len(arguments) // pieces)
    for i in range(0, len(arguments), step):
        out.append(
            oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + step]}}]})
        )
    out.append(oai_chunk({}, "tool_calls"))
    out.append(oai_chunk(usage={"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}))
    out.append(OAI_DONE)
    return out


# -- a provider with answers too big to hold ----------------------------------------------------

ANSWER_BYTES = 8 * 1024 * 1024
DELTA_TEXT = "x" * 8000


class BigAnswers:
    """An upstream that streams an ~8 MB answer per request, made as it goes (never held),
    counting what each response got onto the wire."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> BigAnswers:
        listeners = await nursery.start(trio.serve_tcp, self._handle, 0)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                break
        slot = len(self.sent)
        self.sent.append(0)
        head = conn.send(h11.Response(status_code=200, headers=SSE_HEADERS))
        events = anthropic_text_events([])
        try:
            await stream.send_all(head + conn.send(h11.Data(data=b"".join(events[:2]))))
            delta = sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": DELTA_TEXT}})  # fmt: skip
            while self.sent[slot] < ANSWER_BYTES:
                await stream.send_all(conn.send(h11.Data(data=delta)))
                self.sent[slot] += len(delta)
            await stream.send_all(
                conn.send(h11.Data(data=b"".join(events[-3:]))) + conn.send(h11.EndOfMessage())
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


# -- in-memory providers (httpx.MockTransport), for flights on the MockClock --------------------

MockHandler = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


class PacedStream(httpx.AsyncByteStream):
    """A response body of ``chunks``, each after ``gap`` seconds (virtual ones on the MockClock)."""

    def __init__(self, chunks: list[bytes], gap: float = 0.0, then_hang: bool = False) -> None:
        self.chunks, self.gap, self.then_hang = chunks, gap, then_hang

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            await trio.sleep(self.gap)
            yield c
        if self.then_hang:
            await trio.sleep_forever()


def mock_providers(handlers: dict[str, MockHandler], **provider: object) -> tuple[Config, Registry, Router]:
    """One provider per handler, named as in ``handlers``, each answered in memory by it."""
    config = parse_config(
        {
            "providers": [
                {"name": n, "kind": "anthropic", "base_url": f"http://{n}.test", "api_key": "k", **provider}
                for n in handlers
            ]
        }
    )
    registry = Registry(config)
    for name, handler in handlers.items():
        registry.runtimes[name].client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return config, registry, Router(config)


# -- a strict older Anthropic-compatible server ---------------------------------------------

# The top-level fields such a server knows (Anthropic's API before context management,
# effort, MCP, containers and structured output); anything else is "Extra inputs".
OLD_ANTHROPIC_FIELDS = frozenset(
    {"model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream",
     "temperature", "top_k", "top_p", "tools", "tool_choice", "thinking"}
)  # fmt: skip
OLD_ANTHROPIC_TOOL_FIELDS = frozenset({"name", "description", "input_schema", "cache_control", "type"})
OLD_ANTHROPIC_BETAS = frozenset(
    {"claude-code-20250219", "interleaved-thinking-2025-05-14", "fine-grained-tool-streaming-2025-05-14"}
)


def old_anthropic_rejection(r: Received) -> str | None:
    """What an older Anthropic-compatible server answers 400 to in ``r``, or None if it takes it."""
    body = r.json()
    for key in body:
        if key not in OLD_ANTHROPIC_FIELDS:
            return f"{key}: Extra inputs are not permitted"
    for flag in (r.header("anthropic-beta") or "").split(","):
        if flag.strip() and flag.strip() not in OLD_ANTHROPIC_BETAS:
            return f"Unexpected value(s) `{flag.strip()}` for the `anthropic-beta` header"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in ("enabled", "disabled"):
        return "thinking.type: Input should be 'enabled' or 'disabled'"
    blocks = list(body["system"]) if isinstance(body.get("system"), list) else []
    for i, message in enumerate(body["messages"]):
        if message["role"] not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if extra := set(message) - {"role", "content"}:
            return f"messages.{i}.{sorted(extra)[0]}: Extra inputs are not permitted"
        if isinstance(message["content"], list):
            blocks += message["content"]
    for tool in body.get("tools") or []:
        if extra := set(tool) - OLD_ANTHROPIC_TOOL_FIELDS:
            return f"tools.{tool.get('name')}.{sorted(extra)[0]}: Extra inputs are not permitted"
    for block in list(blocks):
        inner = block.get("content") if block.get("type") == "tool_result" else None
        for part in inner if isinstance(inner, list) else ():
            if part.get("type") not in ("text", "image"):
                return f"tool_result.content: Input tag {part.get('type')!r} does not match any of the expected tags"
            blocks.append(part)
    for block in blocks + list(body.get("tools") or []):
        control = block.get("cache_control") or {}
        if set(control) - {"type"}:
            return f"cache_control: Extra inputs are not permitted ({sorted(set(control) - {'type'})})"
        if block.get("type") == "document":
            return "document blocks are not supported"
    return None


def old_anthropic(reply: Reply) -> Callable[[Received], Reply]:
    """A script for an older Anthropic-compatible server: ``reply`` to what it takes, else its 400."""

    def script(r: Received) -> Reply:
        why = old_anthropic_rejection(r)
        return reply if why is None else error_reply(400, "invalid_request_error", why)

    return script


# -- a strict OpenAI-compatible server -------------------------------------------------------

# JSON-Schema keywords Gemini's OpenAPI-subset schema takes (what its endpoints accept).
GEMINI_SCHEMA_KEYS = frozenset(
    {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
     "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
     "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
)  # fmt: skip


_GEMINI_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
# Gemini's Developer API takes these `format`s on strings and fails the request on any other.
_GEMINI_STRING_FORMATS = frozenset({"enum", "date-time"})


def _schema_rejection(schema: Any, where: str) -> str | None:
    """What Gemini answers 400 to in one tool schema: a key its Schema proto lacks, a `type` that
    is not one of its type names (a list of them included), a non-string `enum` value, a
    string `format` it does not know, `properties` off an object or an object without them, a
    `required` name that is not among the `properties`."""
    if not isinstance(schema, dict):
        return None
    if "properties" in schema and schema.get("type", "object") != "object":
        return f"{where}.properties: only allowed for OBJECT type"
    if schema.get("type") == "object" and "properties" not in schema:
        return f"{where}.properties: should be non-empty for OBJECT type"
    for i, name in enumerate(schema.get("required") or []):
        if name not in (schema.get("properties") or {}):
            return f"{where}.required[{i}]: property is not defined"
    for key, value in schema.items():
        if key not in GEMINI_SCHEMA_KEYS:
            return f"Invalid JSON payload received. Unknown name {key!r} at {where}"
        if key == "type" and not (isinstance(value, str) and value.lower() in _GEMINI_TYPES):
            return f"Invalid JSON payload received. Invalid value at '{where}.type' (Type), {value!r}"
        if key == "enum" and not all(isinstance(v, str) for v in value or []):
            return f"Invalid JSON payload received. Invalid value at '{where}.enum' (TYPE_STRING)"
        if key == "format" and schema.get("type") == "string" and value not in _GEMINI_STRING_FORMATS:
            return f"{where}.format: only 'enum' and 'date-time' are supported for STRING type"
        if key == "properties" and isinstance(value, dict):
            for name, inner in value.items():
                if (why := _schema_rejection(inner, f"{where}.properties[{name!r}]")) is not None:
                    return why
        elif key in ("items",) and (why := _schema_rejection(value, f"{where}.items")) is not None:
            return why
        elif key == "anyOf" and isinstance(value, list):
            for i, inner in enumerate(value):
                if (why := _schema_rejection(inner, f"{where}.anyOf[{i}]")) is not None:
                    return why
    return None


def openai_rejection(
    body: dict[str, Any],
    *,
    files: bool = False,
    gemini_schema: bool = False,
    reasoning_required: bool = False,
) -> str | None:
    """What a strict OpenAI-compatible server answers 400 to in ``body``, or None if it takes it.

    ``files``: it reads ``file`` content parts; ``gemini_schema``: tool parameters must use
    Gemini's schema subset; ``reasoning_required``: an assistant turn with tool calls must carry
    its ``reasoning_content`` (DeepSeek's thinking mode).
    """
    open_calls: set[str] = set()
    for i, message in enumerate(body["messages"]):
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            return f"messages[{i}].role: invalid value {role!r}"
        if role == "tool":
            if message.get("tool_call_id") not in open_calls:
                return f"messages[{i}]: tool message without a preceding tool call"
            open_calls.discard(message["tool_call_id"])
            continue
        if open_calls:
            return f"messages[{i}]: tool calls {sorted(open_calls)} have no tool message"
        content = message.get("content")
        if isinstance(content, list):
            allowed = {"text", "image_url"} | ({"file"} if files else set())
            for part in content:
                if part.get("type") not in allowed:
                    return f"messages[{i}].content: unknown part type {part.get('type')!r}"
        if role == "assistant" and message.get("tool_calls"):
            if reasoning_required and not message.get("reasoning_content"):
                return f"Missing `reasoning_content` field in the assistant message at message index {i}"
            open_calls = {c["id"] for c in message["tool_calls"]}
    for j, tool in enumerate(body.get("tools") or []):
        if gemini_schema and (why := _schema_rejection(tool["function"]["parameters"], f"tools[{j}]")):
            return why
    return None
