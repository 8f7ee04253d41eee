"""Fixtures: a fake upstream and a real Hypercorn serving the balancer, both on 127.0.0.1; and
the session's log output, checked at the end for every secret a test handed the balancer.

What tests import lives in ``tests/helpers.py`` and ``tests/fakes.py``, not here."""

from __future__ import annotations

import io
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from trio_balancer import logging as blog
from trio_balancer.config import parse_config
from trio_balancer.tools import simulator
from trio_balancer.tools.sim_bedrock import SIM_AWS_KEY_ID, SIM_AWS_SECRET

from .fakes import FakeUpstream
from .helpers import SECRETS, Balancer, BalancerFactory, provider_config, start_balancer


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


@pytest.fixture
def session_log() -> list[str]:
    """Every log line written so far this session, as rendered (the list keeps growing)."""
    return SESSION_LOG.lines


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


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The simulator's key pair in the environment, and no other AWS configuration."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SIM_AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SIM_AWS_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
