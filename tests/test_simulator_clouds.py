"""Every fault of the simulator in every dialect, on the wire, in that dialect's own shape.

The request-level faults (an error status with ``retry-after``, a close without a status, a
prompt over the window) come from one preamble and the stream faults (a huge event, invalid
UTF-8) from one delta generator; these pin that each dialect says them as its service does.
The requests go straight to the simulator: Bedrock's signed with the simulator's key, Vertex's
and Gemini's with any token or key (a simulator given none takes any).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from trio_balancer.protocol.windows import prompt_too_long
from trio_balancer.tools import simulator
from trio_balancer.tools.sim_bedrock import SIM_AWS_KEY_ID, SIM_AWS_SECRET

DIALECTS = ["anthropic", "openai", "bedrock", "vertex", "gemini"]
CLOUDS = ["bedrock", "vertex", "gemini"]
MESSAGES: list[Any] = [{"role": "user", "content": "hello there, simulator"}]
HUGE = 70_000
MAX_FRAMES = 1000  # a bound on the frames read from one Bedrock stream


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    sim = simulator.Simulator(simulator.SimOptions(eps=0, events=3))
    port = await nursery.start(partial(simulator.serve, sim))
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        yield c


def _anthropic(stream: bool) -> tuple[str, dict[str, Any]]:
    return "/v1/messages", {"model": "sim-1", "max_tokens": 64, "messages": MESSAGES, "stream": stream}


def _openai(stream: bool) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {"model": "sim-1", "messages": MESSAGES, "stream": stream}


def _bedrock(stream: bool) -> tuple[str, dict[str, Any]]:
    action = "invoke-with-response-stream" if stream else "invoke"
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MESSAGES}
    return f"/model/anthropic.claude-sonnet-4-5-20250929-v1/{action}", body


def _vertex(stream: bool) -> tuple[str, dict[str, Any]]:
    action = "streamRawPredict" if stream else "rawPredict"
    path = (
        f"/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:{action}"
    )
    body = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 64,
        "messages": MESSAGES,
        "stream": stream,
    }
    return path, body


def _gemini(stream: bool) -> tuple[str, dict[str, Any]]:
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/gemini-2.5-pro:{action}", {
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}]
    }


ROUTES: dict[str, Callable[[bool], tuple[str, dict[str, Any]]]] = {
    "anthropic": _anthropic,
    "openai": _openai,
    "bedrock": _bedrock,
    "vertex": _vertex,
    "gemini": _gemini,
}


def _request(
    client: httpx.AsyncClient, dialect: str, faults: dict[str, str], *, stream: bool
) -> httpx.Request:
    """The dialect's model call with the ``x-sim-*`` headers ``faults``."""
    return _to(client, dialect, *ROUTES[dialect](stream), faults)


def _to(
    client: httpx.AsyncClient, dialect: str, path: str, payload: dict[str, Any], faults: dict[str, str]
) -> httpx.Request:
    """A request to ``path``, signed or keyed as the dialect wants."""
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", **faults}
    if dialect == "vertex":
        headers["authorization"] = "Bearer ya29.any"
    elif dialect == "gemini":
        headers["x-goog-api-key"] = "AIzaSy-any"
    elif dialect == "bedrock":
        aws = AWSRequest(method="POST", url=str(client.base_url.join(path)), data=body, headers=headers)
        SigV4Auth(Credentials(SIM_AWS_KEY_ID, SIM_AWS_SECRET), "bedrock", "us-east-1").add_auth(aws)
        headers = dict(aws.headers.items())
    return client.build_request("POST", path, content=body, headers=headers)


async def _answer(
    client: httpx.AsyncClient, dialect: str, faults: dict[str, str], *, stream: bool
) -> httpx.Response:
    r = await client.send(_request(client, dialect, faults, stream=stream))
    await r.aread()
    return r


def _bedrock_events(wire: bytes) -> list[bytes]:
    """The Anthropic events inside Bedrock's event-stream ``chunk`` frames."""
    out = []
    for _ in range(MAX_FRAMES):
        if not wire:
            return out
        total, headers = struct.unpack(">II", wire[:8])
        payload = json.loads(wire[12 + headers : total - 4])
        out.append(base64.b64decode(payload["bytes"]) if "bytes" in payload else b"")
        wire = wire[total:]
    raise AssertionError("more frames than a simulated stream has")


def _stream_bytes(dialect: str, r: httpx.Response) -> bytes:
    """The stream's event bytes, out of Bedrock's frames for Bedrock."""
    assert r.status_code == 200, r.content
    return b"\n".join(_bedrock_events(r.content)) if dialect == "bedrock" else r.content


@pytest.mark.parametrize("status", [429, 503, 529])
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_error_status_carries_retry_after(
    client: httpx.AsyncClient, dialect: str, status: int
) -> None:
    """Every dialect's throttling and overload answers carry the ``retry-after`` asked for."""
    r = await _answer(client, dialect, {"x-sim-status": str(status), "x-sim-retry-after": "7"}, stream=True)
    assert r.status_code == status and r.headers["retry-after"] == "7"
    if dialect == "bedrock":
        name = {429: "ThrottlingException"}.get(status, "ServiceUnavailableException")
        assert r.headers["x-amzn-errortype"].startswith(name + ":") and "message" in r.json()
    elif dialect == "vertex" and status == 529:  # the model's own overload, in Anthropic's shape
        assert r.json()["error"]["type"] == "overloaded_error"
    elif dialect in ("vertex", "gemini") and status != 529:  # Google has no 529 of its own
        error = r.json()["error"]
        assert error["code"] == status
        assert error["status"] == ("RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_error_status_without_retry_after_has_none(client: httpx.AsyncClient, dialect: str) -> None:
    """``retry-after`` is sent only when asked for."""
    r = await _answer(client, dialect, {"x-sim-status": "429"}, stream=False)
    assert r.status_code == 429 and "retry-after" not in r.headers


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_status_closes_without_an_answer(
    client: httpx.AsyncClient, dialect: str, stream: bool
) -> None:
    """``x-sim-no-status``: the request is read, and the connection closed with no status line."""
    with pytest.raises(httpx.RemoteProtocolError):
        await _answer(client, dialect, {"x-sim-no-status": "1"}, stream=stream)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_prompt_over_the_window_is_refused_in_the_dialects_words(
    client: httpx.AsyncClient, dialect: str, stream: bool
) -> None:
    """``x-sim-context-window``: a longer prompt gets the 400 that service answers, which the
    balancer reads as "prompt too long" (Bedrock's says no numbers and has its own shape)."""
    r = await _answer(client, dialect, {"x-sim-context-window": "3"}, stream=stream)
    assert r.status_code == 400
    if dialect == "bedrock":
        assert r.headers["x-amzn-errortype"] == "ValidationException"
        assert r.json() == {"message": "Input is too long for requested model."}
        assert prompt_too_long(400, r.content)  # Bedrock's own shape, read too
        return
    assert prompt_too_long(400, r.content), r.content
    error = r.json()["error"]
    if dialect == "gemini":
        assert (
            error["status"] == "INVALID_ARGUMENT"
            and "exceeds the maximum number of tokens" in error["message"]
        )
    elif dialect == "openai":
        assert error["code"] == "context_length_exceeded"
    else:  # Anthropic's and Vertex's (the model's own answer, as Vertex relays it)
        assert error["type"] == "invalid_request_error" and error["message"].startswith("prompt is too long")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_prompt_within_the_window_is_answered(client: httpx.AsyncClient, dialect: str) -> None:
    r = await _answer(client, dialect, {"x-sim-context-window": "100000"}, stream=False)
    assert r.status_code == 200, r.content


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_huge_event_follows_the_first_delta(client: httpx.AsyncClient, dialect: str) -> None:
    """``x-sim-huge-event``: one event of that many bytes, framed as the dialect frames events."""
    r = await _answer(client, dialect, {"x-sim-huge-event": str(HUGE)}, stream=True)
    wire = _stream_bytes(dialect, r)
    assert wire.count(b"A" * HUGE) == 1
    if dialect == "bedrock":
        assert b"A" * HUGE in _bedrock_events(r.content)  # its own chunk frame
    else:
        assert b"data: " + b"A" * HUGE + b"\n" in wire or b"data: " + b"A" * HUGE + b"\r\n" in wire


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_bad_utf8_spoils_each_deltas_text(client: httpx.AsyncClient, dialect: str) -> None:
    """``x-sim-bad-utf8``: every text delta carries bytes that are no UTF-8; nothing else does."""
    r = await _answer(client, dialect, {"x-sim-bad-utf8": "1", "x-sim-events": "3"}, stream=True)
    wire = _stream_bytes(dialect, r)
    assert wire.count(b"\xff\xfe") == 3
    with pytest.raises(UnicodeDecodeError):
        wire.decode()


@pytest.mark.parametrize("dialect", CLOUDS)
async def test_a_clean_stream_is_utf8_with_no_huge_event(client: httpx.AsyncClient, dialect: str) -> None:
    """The faults above are the options' doing: without them the same stream is clean."""
    r = await _answer(client, dialect, {}, stream=True)
    wire = _stream_bytes(dialect, r)
    assert b"\xff" not in wire and b"A" * 100 not in wire
    wire.decode()


def _bedrock_count() -> tuple[str, dict[str, Any]]:
    path, body = _bedrock(False)
    inner = base64.b64encode(json.dumps(body).encode()).decode()
    return path.replace("/invoke", "/count-tokens"), {"input": {"invokeModel": {"body": inner}}}


COUNTS: dict[str, tuple[tuple[str, dict[str, Any]], str]] = {
    "anthropic": (("/v1/messages/count_tokens", {"model": "sim-1", "messages": MESSAGES}), "input_tokens"),
    "bedrock": (_bedrock_count(), "inputTokens"),
    "vertex": (
        (
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict",
            {
                "anthropic_version": "vertex-2023-10-16",
                "model": "claude-sonnet-4-5@20250929",
                "messages": MESSAGES,
            },
        ),
        "input_tokens",
    ),
    "gemini": (
        (
            "/v1beta/models/gemini-2.5-pro:countTokens",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        ),
        "totalTokens",
    ),
}


@pytest.mark.parametrize("dialect", sorted(COUNTS))
async def test_token_counts_are_not_held_to_the_window(client: httpx.AsyncClient, dialect: str) -> None:
    """Counting a prompt longer than the window answers its count: only a model call is refused."""
    (path, payload), field = COUNTS[dialect]
    r = await client.send(_to(client, dialect, path, payload, {"x-sim-context-window": "1"}))
    assert r.status_code == 200, r.text
    assert r.json()[field] > 1
