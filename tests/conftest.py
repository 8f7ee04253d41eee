"""Fixtures: a fake upstream and a real Hypercorn serving the balancer, both on 127.0.0.1."""

from __future__ import annotations

import io
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio

from trio_balancer import logging as blog
from trio_balancer.app import asgi
from trio_balancer.app.asgi import BalancerApp, create_app
from trio_balancer.app.server import hypercorn_config, serve
from trio_balancer.config import Config, parse_config
from trio_balancer.tools import simulator

from .fakes import FakeUpstream

PROVIDER_KEY = "sk-test-provider-key-0123456789"
CLIENT_KEY = "sk-ant-client-key-abcdefghijkl"

# Every secret any test hands the balancer. The whole session's log output is kept and checked
# at the end: if one of these appears anywhere, the run fails (tests/test_observability.py).
SECRETS = [PROVIDER_KEY, CLIENT_KEY, "sk-secret-value-123456", "sk-cli-test-key", "sk-hidden-1", "sk-backup",
           "sk-ant-someone-else-1234567", "sk-ant-example"]  # fmt: skip


class _Tee(io.TextIOBase):
    """Log lines go to stderr (pytest shows them on failure) and into the session's record."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


SESSION_LOG = _Tee()
blog.configure("debug", "console", stream=SESSION_LOG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    text = "".join(SESSION_LOG.lines)
    leaked = [s for s in SECRETS if s in text]
    if leaked:
        sys.stderr.write(f"\nSECRETS LEAKED INTO LOGS during the test run: {len(leaked)} distinct keys\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _fresh_log_context() -> None:
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default ledger lives under ~; every test (and its subprocesses) gets its own ~."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def count_tasks() -> int:
    """Every task alive in this trio run: the fixtures', Hypercorn's, the app's and ours."""
    return asgi.count_tasks([trio.lowlevel.current_root_task()])


class Balancer:
    def __init__(self, app: BalancerApp, url: str) -> None:
        self.app = app
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0), trust_env=False)

    async def wait_idle(self) -> None:
        """Wait (bounded) until no flight is running in the app."""
        with trio.fail_after(5):
            await self.app.wait_idle()


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


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    """Every log event as a dict, taken from the live pipeline just before rendering.

    Module loggers are cached on first use, so replacing the configuration (as
    ``structlog.testing.capture_logs`` does) would miss them; inserting a processor into the
    configured list reaches every logger, after contextvars are merged and secrets redacted.
    """
    entries: list[dict[str, Any]] = []

    def capture(_logger: Any, _method: str, event_dict: Any) -> Any:
        entries.append(dict(event_dict))
        return event_dict

    processors = structlog.get_config()["processors"]
    processors.insert(len(processors) - 1, capture)
    try:
        yield entries
    finally:
        processors.remove(capture)


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    return await FakeUpstream().start(nursery)


BalancerFactory = Callable[..., Awaitable[Balancer]]


@pytest.fixture
async def balancer_for(nursery: trio.Nursery) -> AsyncIterator[BalancerFactory]:
    """``await balancer_for(upstream, ...)`` or ``await balancer_for(config=dict)``."""
    made: list[Balancer] = []

    async def make(*upstreams: FakeUpstream, config: dict[str, Any] | None = None, **extra: Any) -> Balancer:
        data = config if config is not None else provider_config(*upstreams, **extra)
        b = await start_balancer(nursery, parse_config(data))
        made.append(b)
        return b

    yield make
    for b in made:
        await b.client.aclose()


@pytest.fixture
async def sim(nursery: trio.Nursery) -> str:
    """The upstream simulator on a free port; its URL."""
    port = await nursery.start(partial(simulator.serve, simulator.Simulator()))
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def balancer(upstream: FakeUpstream, balancer_for: BalancerFactory) -> Balancer:
    return await balancer_for(upstream)
