"""Fuzzing: whatever a client sends or an upstream streams, no 500 and no unhandled exception.

Malformed client input gets a 4xx in Anthropic's shape with a message; a broken upstream gets
a 502/504 (its fault, said so) or an SSE error event; the balancer's own "internal error" path
is never taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_balancer.app.asgi import create_app
from trio_balancer.config import parse_config

from .asgi_driver import call, running
from .fakes import anthropic_text_events

LOCAL = ("127.0.0.1", 4000)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": st.one_of(st.text(max_size=30), st.integers(), st.none())},
        optional={
            "messages": json_values,
            "max_tokens": json_values,
            "stream": st.one_of(st.booleans(), st.text(max_size=3)),
            "system": json_values,
            "tools": json_values,
            "metadata": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)
header_names = st.sampled_from([b"x-api-key", b"authorization", b"anthropic-version", b"anthropic-beta", b"content-type",
                                b"x-balancer-no-dedup", b"content-length", b"x-anything"])  # fmt: skip
headers = st.lists(
    st.tuples(
        header_names, st.binary(min_size=0, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
    ),
    max_size=6,
)


class Upstream:
    """An in-memory provider whose SSE bytes the test chooses (httpx.MockTransport)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = [b"".join(anthropic_text_events(["fine"]))]
        self.status = 200

    async def handler(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            self.status, headers={"content-type": "text/event-stream"}, stream=_Chunks(self.chunks)
        )


class _Chunks(httpx.AsyncByteStream):
    """A plain iterator rather than an async generator: nothing to finalise if abandoned."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


@pytest.fixture
def crashes() -> Iterator[list[dict[str, Any]]]:
    """Every time the flight's catch-all for our own bugs fires."""
    seen: list[dict[str, Any]] = []

    def capture(_l: Any, _m: str, event: Any) -> Any:
        if event.get("event") == "flight.crash":
            seen.append(dict(event))
        return event

    processors = structlog.get_config()["processors"]
    processors.insert(0, capture)
    yield seen
    processors.remove(capture)


def app_with(upstream: Upstream) -> Any:
    config = parse_config(
        {"ledger": {"enabled": False}, "dedup": {"enabled": False},
         "providers": [{"name": "p", "kind": "anthropic", "base_url": "http://upstream.test", "api_key": "k"}]}
    )  # fmt: skip
    app = create_app(config)
    return app


def use_mock(app: Any, upstream: Upstream) -> None:
    app.registry.runtimes["p"].client = httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, extra=headers, path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
async def test_client_input_never_500(
    body: bytes, extra: list[tuple[bytes, bytes]], path: str, crashes: list[dict[str, Any]]
) -> None:
    upstream = Upstream()
    async with running(app_with(upstream)) as app:
        use_mock(app, upstream)
        status, out = await call(app, "POST", path, client=LOCAL, headers=tuple(extra), body=body)
    assert status < 500, (status, out[:200])
    if status >= 400:
        err = json.loads(out)
        assert err["type"] == "error" and err["error"]["type"] and err["error"]["message"]
    assert crashes == []


events = st.lists(
    st.one_of(
        st.sampled_from(anthropic_text_events(["a", "bb"])),
        st.binary(max_size=60),
        st.builds(
            lambda n, d: f"event: {n}\ndata: {d}\n\n".encode(),
            st.sampled_from(
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "error",
                    "message_stop",
                    "ping",
                    "x",
                ]
            ),
            st.text(max_size=40),
        ),
    ),
    max_size=12,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stream=events,
    split=st.integers(min_value=1, max_value=50),
    status=st.sampled_from([200, 200, 200, 400, 500, 529]),
)
async def test_upstream_streams_never_crash(
    stream: list[bytes], split: int, status: int, crashes: list[dict[str, Any]]
) -> None:
    wire = b"".join(stream)
    upstream = Upstream()
    upstream.status = status
    upstream.chunks = [wire[i : i + split] for i in range(0, len(wire), split)]
    async with running(app_with(upstream)) as app:
        use_mock(app, upstream)
        body = json.dumps(
            {
                "model": "claude-opus-4-6",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            }
        ).encode()
        code, out = await call(app, "POST", "/v1/messages", client=LOCAL, body=body)
    assert crashes == []
    if code == 200:
        # Either a complete stream from the provider, or its bytes and then one error event.
        assert out.endswith(b"\n\n") or out == b""
    else:
        assert code in (400, 500, 502, 504, 529) and json.loads(out)["type"] == "error"
