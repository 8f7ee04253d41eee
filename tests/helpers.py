"""What the test modules share: keys, request bodies, the balancer under test, ways to wait.

Fake providers and what they send live in ``tests/fakes.py``, fixtures in ``tests/conftest.py``;
test modules import from these, never from one another. Nothing here sleeps to order things:
waits are on events, or on state checked each time every task is blocked, and all are bounded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

import attrs
import httpx
import trio
import trio.testing

from trio_balancer.app import asgi
from trio_balancer.app.asgi import BalancerApp, create_app
from trio_balancer.app.server import hypercorn_config, serve
from trio_balancer.config import Config, ProviderConfig, parse_config
from trio_balancer.policy.health import ProviderHealth
from trio_balancer.policy.ratelimits import RateLimitState
from trio_balancer.policy.routing import Ewma
from trio_balancer.protocol.features import needs_of
from trio_balancer.upstream.request import UpstreamRequest

from .fakes import FakeUpstream, Pause

# -- keys --------------------------------------------------------------------------------------

PROVIDER_KEY = "sk-test-provider-key-0123456789"
CLIENT_KEY = "sk-ant-client-key-abcdefghijkl"

# Every secret any test hands the balancer. The whole session's log output is kept and checked
# at the end: if one of these appears anywhere, the run fails (tests/conftest.py).
SECRETS = [PROVIDER_KEY, CLIENT_KEY, "sk-secret-value-123456", "sk-cli-test-key", "sk-hidden-1", "sk-backup",
           "sk-ant-someone-else-1234567", "sk-ant-example"]  # fmt: skip

# -- requests ----------------------------------------------------------------------------------

OPUS = "claude-opus-4-6"
SONNET = "claude-sonnet-4-6"


def message_body(
    *, model: str = OPUS, max_tokens: int = 64, stream: bool | None = None, content: str = "hi"
) -> dict[str, Any]:
    """A /v1/messages request of one user message; ``stream`` left out when None."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if stream is not None:
        body["stream"] = stream
    body["messages"] = [{"role": "user", "content": content}]
    return body


BODY = message_body(stream=True)  # the usual streamed request
JSON_BODY = message_body()  # the same asked without "stream" (a JSON answer)

# For tests about providers: every request must reach one, none may be answered from a shared
# flight or the response cache (tests/test_dedup.py covers those).
NO_DEDUP = {"x-balancer-no-dedup": "1"}


def raw_request(port: int, body: dict[str, Any], *, version: bytes = b"1.1", close: bool = False) -> bytes:
    """POST /v1/messages as bytes, for clients on a bare socket."""
    payload = json.dumps(body).encode()
    head = [
        f"POST /v1/messages HTTP/{version.decode()}",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
    ]
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def big_answer_request(port: int, i: int) -> bytes:
    """A streamed request asking for a long answer (what ``fakes.BigAnswers`` gives), distinct per ``i``."""
    return raw_request(port, message_body(max_tokens=64000, stream=True, content=f"write a lot {i}"))


def assert_error(r: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """``r`` is an Anthropic error of ``status`` and ``error_type``, with a message; its body."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


# -- the balancer under test -------------------------------------------------------------------


class Balancer:
    def __init__(self, app: BalancerApp, url: str) -> None:
        self.app = app
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0), trust_env=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def wait_idle(self) -> None:
        """Wait (bounded) until no flight is running in the app."""
        with trio.fail_after(5):
            await self.app.wait_idle()

    async def ledger_rows(self, count: int) -> list[dict[str, Any]]:
        """Once ``count`` requests are written to the ledger, the rows /usage/requests lists."""
        await self.wait_idle()
        assert self.app.ledger is not None
        with trio.fail_after(10):
            await self.app.ledger.wait_written(count)
        r = await self.client.get("/usage/requests", params={"limit": 1000})
        return r.json()["records"]  # type: ignore[no-any-return]


BalancerFactory = Callable[..., Awaitable[Balancer]]


def provider_config(*upstreams: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [
            {"name": f"p{i}", "kind": "anthropic", "base_url": u.url, "api_key": PROVIDER_KEY, **extra}
            for i, u in enumerate(upstreams)
        ]
    }


async def start_balancer(
    nursery: trio.Nursery,
    config: Config,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    **hypercorn_options: Any,
) -> Balancer:
    """The app behind Hypercorn on a free port, set up as ``trio-balancer serve`` sets it up."""
    app = create_app(config)
    hc = hypercorn_config(config, "127.0.0.1", 0)
    hc.errorlog = None
    hc.graceful_timeout = 0.5
    for name, value in hypercorn_options.items():
        setattr(hc, name, value)
    binds = await nursery.start(partial(serve, app, hc, shutdown_trigger=shutdown))
    return Balancer(app, binds[0])


def count_tasks() -> int:
    """Every task alive in this trio run: the fixtures', Hypercorn's, the app's and ours."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return asgi.count_tasks([root])


# -- waiting without sleeps --------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], limit: float = 5) -> None:
    """Return once ``predicate()`` holds, checked each time every task has been blocked a moment
    (the app has done all it can with what it was sent); fail after ``limit`` seconds."""
    with trio.fail_after(limit):
        while not predicate():
            await trio.testing.wait_all_tasks_blocked(0.01)


async def wait_for_listeners(app: BalancerApp, count: int) -> None:
    """Return once a flight in ``app`` has exactly ``count`` listeners (clients joined to it)."""
    await wait_until(lambda: any(f.view().listeners == count for f in app.flights))


def release_as_seen(wire: bytes, pauses: Sequence[Pause], *, at_once: int) -> None:
    """For a reply of ``at_once`` events and then one ``Pause`` before each further event: let
    the provider send the next event once the client has every event before it (``wire`` is
    what the client has read). A balancer that held events back would never get the next one."""
    seen = wire.count(b"\n\n")
    for pause in pauses[: max(0, seen - at_once + 1)]:
        pause.release()


def one_at_a_time(events: Sequence[bytes], *, at_once: int) -> tuple[list[Any], list[Pause]]:
    """Reply steps sending ``events[:at_once]`` together, then each further event after a pause
    of its own; with ``release_as_seen`` each event crosses the balancer alone."""
    pauses = [Pause() for _ in events[at_once:]]
    steps: list[Any] = list(events[:at_once])
    for pause, event in zip(pauses, events[at_once:], strict=True):
        steps += [pause, event]
    return steps, pauses


# -- routing -----------------------------------------------------------------------------------


@attrs.define
class View:
    """What the router reads of one provider: health, rate-limit state, latency."""

    health: ProviderHealth = attrs.Factory(lambda: ProviderHealth(rng=lambda: 0.5))
    limits: RateLimitState = attrs.Factory(RateLimitState)
    latency: Ewma = attrs.Factory(Ewma)


def views(config: Config) -> dict[str, View]:
    return {p.name: View() for p in config.providers}


# -- subprocesses ------------------------------------------------------------------------------


async def read_until(
    stream: trio.abc.ReceiveStream, pattern: bytes, limit: float = 20.0
) -> tuple[re.Match[bytes], bytes]:
    """Read a process's output until ``pattern`` appears; the match and everything read."""
    seen = b""
    with trio.fail_after(limit):
        while (m := re.search(pattern, seen)) is None:
            chunk = await stream.receive_some(4096)
            assert chunk, f"process closed stderr; output so far: {seen!r}"
            seen += chunk
    return m, seen


def env() -> dict[str, str]:
    """The environment for a balancer subprocess: ours, unbuffered (its lines come as written)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# -- one request made to fit one provider (the pure fit, no sockets) ---------------------------


def fit_provider(kind: str = "anthropic", **row: Any) -> ProviderConfig:
    """One provider named ``p`` of ``kind``, its row's other keys (``preset``, ``capabilities``...)."""
    data = {"name": "p", "kind": kind, "base_url": "http://127.0.0.1:1", "api_key": PROVIDER_KEY, **row}
    return parse_config({"providers": [data]}).providers[0]


def fit_request_of(body: dict[str, Any], betas: str = "") -> UpstreamRequest:
    """The parsed request a client sending ``body`` (and these beta flags) makes."""
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
    if betas:
        headers += ((b"anthropic-beta", betas.encode()),)
    return UpstreamRequest(
        path="/v1/messages", query=b"", headers=headers, body=json.dumps(body).encode(), payload=body,
        model=body["model"], stream=bool(body.get("stream")), needs=needs_of(body),
    )  # fmt: skip


def sent_betas(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The beta flags a fitted request sends, in order."""
    return [f for n, v in headers if n == b"anthropic-beta" for f in v.decode().split(",") if f]
