"""``serve --workers N``: several processes on one port, drained on SIGTERM, reloaded on SIGHUP,
restarted when one dies, every request recorded once; per-key limits without Redis refused."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_balancer.ledger import open_store

from .fakes import FakeUpstream, Pause, Reply, anthropic_text_events
from .helpers import PROVIDER_KEY, message_body

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="SO_REUSEPORT workers: Linux")


def write_config(
    path: Path, upstream: FakeUpstream, ledger: Path, *, models: list[str], extra: str = ""
) -> None:
    path.write_text(
        "[server]\nport = 0\ngrace_period_s = 10\n"
        f"{extra}"
        f"[ledger]\nurl = 'sqlite:///{ledger}'\n"
        f"[[providers]]\nname = 'p'\nkind = 'anthropic'\nbase_url = '{upstream}'\napi_key = '{PROVIDER_KEY}'\n"
        f"models = {json.dumps(models)}\n"
    )


class Workers:
    """The parent process, its port, and a client that opens a new connection per request."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=10) as client:
            return await client.get(path)

    async def status(self) -> dict[str, Any]:
        return (await self.get("/status.json")).json()  # type: ignore[no-any-return]

    async def seen(self, count: int) -> dict[str, int]:
        """Worker -> pid, asking /status.json on ``count`` new connections."""
        out: dict[str, int] = {}
        for _ in range(count):
            s = await self.status()
            out[s["worker"]] = s["pid"]
        return out


async def start(nursery: trio.Nursery, config: Path, workers: int = 2) -> Workers:
    stderr_path = config.with_suffix(".log")
    log = stderr_path.open("wb")
    cmd = [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--workers", str(workers)]
    process = await trio.lowlevel.open_process(cmd, stderr=log, stdout=log)
    log.close()  # the child has its own copy
    nursery.start_soon(_reap, process)
    port = None
    with trio.fail_after(30):
        while port is None:  # bounded: the parent says its port at once, the workers in a second
            text = stderr_path.read_text()
            for line in text.splitlines():
                if " workers on http://" in line:
                    port = int(line.rsplit(":", 1)[1].split(" ")[0])
            if process.returncode is not None:
                raise AssertionError(text)
            await trio.sleep(0.05)
        w = Workers(process, port)
        while True:  # every worker listening (each prints its line)
            if stderr_path.read_text().count("listening on") >= workers:
                break
            await trio.sleep(0.05)
    return w


async def _reap(process: trio.Process) -> None:
    try:
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    return await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)


async def test_workers_share_the_port_and_record_every_request_once(
    nursery: trio.Nursery, tmp_path: Path, upstream: FakeUpstream
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    write_config(tmp_path / "b.toml", upstream.url, ledger, models=["claude-opus-4-6"])
    w = await start(nursery, tmp_path / "b.toml")
    for i in range(30):  # a new connection each: the kernel spreads them over the workers
        async with httpx.AsyncClient(base_url=w.url, trust_env=False, timeout=10) as client:
            r = await client.post("/v1/messages", json=message_body(stream=True, content=f"hi {i}"))
            assert r.status_code == 200 and b"message_stop" in r.content
    assert len(upstream.received) == 30
    # Whichever worker answers /metrics, it counts the whole balancer's requests.
    for _ in range(6):
        text = (await w.get("/metrics")).text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("trio_balancer_requests_total{")
        )
        assert total == 30, text
    w.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await w.process.wait() == 0
    store = open_store(f"sqlite:///{ledger}")
    try:
        rows = store.records(limit=1000)
    finally:
        store.close()
    assert len(rows) == 30 and len({r["id"] for r in rows}) == 30
    assert len({r["instance"] for r in rows}) == 2  # both workers served (2**-29 odds of not)


async def test_sigterm_drains_a_stream_in_progress(nursery: trio.Nursery, tmp_path: Path) -> None:
    pause = Pause()
    events = anthropic_text_events(["first ", "second"])
    up = await FakeUpstream(Reply(steps=[*events[:4], pause, *events[4:]])).start(nursery)
    write_config(tmp_path / "b.toml", up.url, tmp_path / "ledger.sqlite3", models=["claude-opus-4-6"])
    w = await start(nursery, tmp_path / "b.toml")
    body = bytearray()
    async with (
        httpx.AsyncClient(base_url=w.url, trust_env=False, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=message_body(stream=True)) as r,
    ):
        chunks = r.aiter_bytes()  # one iterator: httpx streams a body once
        with trio.fail_after(10):
            while b"first " not in body:
                body += await chunks.__anext__()
        with trio.fail_after(10):
            await pause.reached.wait()
        w.process.send_signal(signal.SIGTERM)  # the stream is in flight: it must finish
        log = tmp_path / "b.log"
        with trio.fail_after(10):  # both workers said they are draining
            while log.read_text().count("shutting down gracefully") < 2:  # noqa: ASYNC110 - another process
                await trio.sleep(0.05)
        pause.release()
        async for chunk in chunks:
            body += chunk
    assert b"second" in body and b"message_stop" in body
    with trio.fail_after(30):
        assert await w.process.wait() == 0


async def test_sighup_reloads_every_worker_and_a_killed_worker_comes_back(
    nursery: trio.Nursery, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = tmp_path / "b.toml"
    write_config(config, upstream.url, tmp_path / "ledger.sqlite3", models=["claude-opus-4-6"])
    w = await start(nursery, config)
    pids = await w.seen(40)
    assert set(pids) == {"0/2", "1/2"}
    write_config(config, upstream.url, tmp_path / "ledger.sqlite3", models=["claude-opus-4-6", "added-model"])
    w.process.send_signal(signal.SIGHUP)
    with trio.fail_after(20):
        while True:  # bounded: each worker reloads within moments; ask many connections
            answers = [await w.get("/v1/models") for _ in range(20)]
            if all("added-model" in r.text for r in answers):
                break
            await trio.sleep(0.1)
    os.kill(pids["1/2"], signal.SIGKILL)  # a worker dies: the parent starts it again
    with trio.fail_after(30):
        while True:
            now = await w.seen(10)
            if now.get("1/2") not in (None, pids["1/2"]):
                break
            await trio.sleep(0.2)
    assert now["0/2"] == pids["0/2"]  # the other worker was not touched
    w.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await w.process.wait() == 0


def test_per_key_limits_without_redis_are_refused(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "b.toml"
    extra = f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{'0' * 64}'\nmax_concurrent = 2\n"
    write_config(config, "http://127.0.0.1:9", tmp_path / "ledger.sqlite3", models=["m"], extra=extra)
    result = subprocess.run(
        [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "'alice'" in result.stderr and "redis_url" in result.stderr


async def test_workers_stop_when_their_parent_is_killed(
    nursery: trio.Nursery, tmp_path: Path, upstream: FakeUpstream
) -> None:
    write_config(tmp_path / "b.toml", upstream.url, tmp_path / "ledger.sqlite3", models=["m"])
    w = await start(nursery, tmp_path / "b.toml")
    pids = await w.seen(40)
    w.process.kill()  # SIGKILL: the parent cannot forward anything
    with trio.fail_after(30):
        while any(_alive(pid) for pid in pids.values()):  # noqa: ASYNC110 - other processes
            await trio.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
