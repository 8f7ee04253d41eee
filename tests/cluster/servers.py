"""Real PostgreSQL and Redis servers on 127.0.0.1 for the cluster tests.

Started from the system's binaries (``.ci/run`` installs the Debian packages when they are
missing) in temporary directories, on free ports, and stopped at the end. PostgreSQL refuses
to run as root, so as root the server runs as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


class PgServer:
    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not bins:
            pytest.skip("PostgreSQL is not installed (`.ci/run` installs the postgresql package)")
        self.bin = Path(bins[-1]).parent
        # Not under pytest's temporary tree: that is private to root, and as root the server
        # must run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="trio-balancer-pg-"))
        self.data = self.root / "pgdata"
        self.port = _free_port()
        # As root, run as the package's postgres user: Popen(user=...) so that signals reach the
        # server itself (a runuser wrapper does not forward them).
        self.user: dict[str, str] = {}
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.user = {"user": "postgres", "group": "postgres"}
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, **self.user)  # type: ignore[call-overload]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.data),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self.user,
        )  # fmt: skip
        _wait_port(self.port, self.proc)
        deadline = time.monotonic() + 30
        import psycopg

        while True:  # listening is not yet accepting queries
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave).
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
        self.proc = None

    def reset(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS requests, usage_hours, trio_balancer_schema")
            conn.execute("DROP FUNCTION IF EXISTS requests_usage_hours")


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("Redis is not installed (`.ci/run` installs the redis-server package)")
        self.binary = binary
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()
