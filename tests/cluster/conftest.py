"""Fixtures: the session's PostgreSQL and Redis servers (``servers.py``), fresh for each test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from .servers import PgServer, RedisServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    yield server
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def pg(pg_server: PgServer) -> Iterator[PgServer]:
    if pg_server.proc is None:
        pg_server.start()
    pg_server.reset()
    yield pg_server
    if pg_server.proc is None:
        pg_server.start()


@pytest.fixture
def redis_srv(redis_server: RedisServer) -> Iterator[RedisServer]:
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    yield redis_server
    if redis_server.proc is None:
        redis_server.start()
