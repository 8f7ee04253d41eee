"""Attacks on ``serve --workers N`` (issue 20): the parent's lifecycle, signals and the port.

Every test starts real processes on 127.0.0.1 and kills whatever it started by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import trio

from .fakes import FakeUpstream, Pause, Reply, anthropic_text_events
from .helpers import message_body
from .test_workers import _alive, start, write_config

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="SO_REUSEPORT workers: Linux")


def children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def finish(process: trio.Process, pids: set[int]) -> None:
    """Kill the parent and every worker seen, and reap the parent (bounded)."""
    pids = pids | children(process.pid)
    process.kill()
    kill_all(pids)
    with trio.move_on_after(10):
        await process.wait()


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    return await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)


async def test_sigterm_during_a_restart_backoff_stops_the_balancer(
    nursery: trio.Nursery, tmp_path: Path, upstream: FakeUpstream
) -> None:
    """A worker died; the parent sleeps 1 s before starting it again. SIGTERM in that second
    must stop the balancer: the restarted worker must not be started, or must be told too."""
    write_config(tmp_path / "b.toml", upstream.url, tmp_path / "ledger.sqlite3", models=["m"])
    w = await start(nursery, tmp_path / "b.toml")
    pids = await w.seen(40)
    seen: set[int] = set(pids.values())
    try:
        os.kill(pids["1/2"], signal.SIGKILL)
        log = tmp_path / "b.log"
        with trio.fail_after(10):
            while "worker.ended" not in log.read_text():  # noqa: ASYNC110 - another process
                await trio.sleep(0.02)
        w.process.send_signal(signal.SIGTERM)  # inside the 1 s backoff
        with trio.move_on_after(20):
            await w.process.wait()
        seen |= children(w.process.pid)
        assert w.process.returncode is not None, (
            f"parent still running 20 s after SIGTERM; its workers: {children(w.process.pid)}\n{log.read_text()}"
        )
    finally:
        seen |= children(w.process.pid)
        await finish(w.process, seen)


def detached_parent(tmp_path: Path, upstream: FakeUpstream) -> tuple[subprocess.Popen[bytes], Path]:
    """``serve --workers 2`` started outside any nursery (the test kills it itself), and its log."""
    config = tmp_path / "b.toml"
    write_config(config, upstream.url, tmp_path / "ledger.sqlite3", models=["m"])
    log = tmp_path / "b.log"
    with log.open("wb") as f:
        parent = subprocess.Popen(  # not the nursery's child: the tests kill it themselves
            [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--workers", "2"],
            stdout=f, stderr=f,
        )  # fmt: skip
    return parent, log


async def test_workers_stop_when_the_parent_is_killed_while_they_start(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """SIGKILL of the parent before a worker finished starting: the worker reads its parent's
    pid only once it serves, so it takes init for its parent and serves for ever."""
    parent, log = detached_parent(tmp_path, upstream)
    kids: set[int] = set()
    try:
        with trio.fail_after(20):
            while len(kids) < 2:
                kids = children(parent.pid)
                await trio.sleep(0.01)
        parent.kill()  # the workers are still importing
        parent.wait(timeout=10)
        with trio.fail_after(30):
            while log.read_text().count("listening on") < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        with trio.move_on_after(10):  # _parent_gone polls every second
            while any(_alive(p) for p in kids):  # noqa: ASYNC110
                await trio.sleep(0.2)
        assert not any(_alive(p) for p in kids), f"orphaned workers still serving: {kids}\n{log.read_text()}"
    finally:
        parent.kill()
        kill_all(kids)
        parent.wait(timeout=10)


async def test_sighup_while_workers_start_does_not_kill_them(tmp_path: Path, upstream: FakeUpstream) -> None:
    """A reload asked (SIGHUP) while workers are still starting: forwarded to a worker that has
    no SIGHUP handler yet, it kills it (default action), which counts as a death; a few such
    reloads in a row and the parent gives up and stops the whole balancer."""
    parent, log = detached_parent(tmp_path, upstream)
    everyone: set[int] = set()
    try:
        with trio.fail_after(60):
            for _ in range(3):  # bounded: three reloads, each while fresh workers start
                kids: set[int] = set()
                while len(kids - everyone) < 2 and parent.poll() is None:
                    kids = children(parent.pid)
                    await trio.sleep(0.01)
                if parent.poll() is not None:
                    break
                everyone |= kids
                await trio.sleep(0.1)
                parent.send_signal(signal.SIGHUP)
                while any(_alive(p) for p in kids):  # only for the check below: bounded by fail_after
                    if log.read_text().count("listening on") >= 2:
                        break
                    await trio.sleep(0.05)
        text = log.read_text()
        assert "worker.died" not in text and parent.poll() is None, text
    finally:
        everyone |= children(parent.pid)
        parent.kill()
        kill_all(everyone)
        parent.wait(timeout=10)


def _stranger(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def test_a_port_another_program_listens_on_with_so_reuseport_is_refused(tmp_path: Path) -> None:
    """Another program (same user) listens on the port with SO_REUSEPORT: one worker refuses
    to start (EADDRINUSE); --workers 2 must too, else the kernel hands it part of the clients."""
    stranger = _stranger(0)
    port = stranger.getsockname()[1]
    config = tmp_path / "b.toml"
    write_config(config, "http://127.0.0.1:9", tmp_path / "ledger.sqlite3", models=["m"])
    try:
        single = subprocess.run(
            [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert single.returncode == 1 and "cannot listen" in single.stderr, single.stderr
        log = tmp_path / "w.log"
        with log.open("wb") as f:
            parent = subprocess.Popen(
                [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--port", str(port),
                 "--workers", "2"],
                stdout=f, stderr=f,
            )  # fmt: skip
        try:
            code = parent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        kids = children(parent.pid)
        parent.kill()
        kill_all(kids)
        parent.wait(timeout=10)
        assert code not in (None, 0), (
            f"--workers 2 started on a port another program listens on\n{log.read_text()}"
        )
    finally:
        stranger.close()


async def test_the_metrics_directory_does_not_outlive_a_killed_parent(
    nursery: trio.Nursery, tmp_path: Path, upstream: FakeUpstream
) -> None:
    before = {p.name for p in Path(tempfile.gettempdir()).glob("trio-balancer-metrics-*")}
    write_config(tmp_path / "b.toml", upstream.url, tmp_path / "ledger.sqlite3", models=["m"])
    w = await start(nursery, tmp_path / "b.toml")
    pids = await w.seen(40)
    w.process.kill()
    await w.process.wait()
    with trio.fail_after(30):
        while any(_alive(pid) for pid in pids.values()):  # noqa: ASYNC110
            await trio.sleep(0.2)
    left = {p.name for p in Path(tempfile.gettempdir()).glob("trio-balancer-metrics-*")} - before
    assert len(left) == 1  # SIGKILL: nobody could remove it then...
    again = await start(nursery, tmp_path / "b.toml")  # ...the next balancer does
    now = {p.name for p in Path(tempfile.gettempdir()).glob("trio-balancer-metrics-*")}
    assert not (left & now), f"left behind: {left}"
    again.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        await again.process.wait()


def _key_config(config: Path, upstream: str, ledger: Path, digest: str) -> None:
    extra = f"[[server.client_keys]]\nname = 'alice'\nsha256 = '{digest}'\nmax_concurrent = 1\n"
    write_config(config, upstream, ledger, models=["claude-opus-4-6"], extra=extra)


async def test_a_reload_cannot_bring_in_per_key_limits_without_redis(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """At start, max_concurrent without Redis is refused for --workers; a SIGHUP bringing it
    in must be refused too, else alice's max_concurrent = 1 becomes one per worker."""
    from trio_balancer.policy.auth import new_key

    pause = Pause()
    events = anthropic_text_events(["a", "b"])
    up = await FakeUpstream(Reply(steps=[*events[:3], pause, *events[3:]])).start(nursery)
    config, ledger = tmp_path / "b.toml", tmp_path / "ledger.sqlite3"
    write_config(config, up.url, ledger, models=["claude-opus-4-6"])
    w = await start(nursery, config)
    kids = children(w.process.pid)
    key, digest = new_key()
    _key_config(config, up.url, ledger, digest)
    w.process.send_signal(signal.SIGHUP)
    log = tmp_path / "b.log"
    try:
        with trio.fail_after(20):
            while log.read_text().count("config.reload") < 2:  # noqa: ASYNC110 - reloaded or failed
                await trio.sleep(0.05)
        statuses: list[int] = []

        async def one(i: int) -> None:
            async with (
                httpx.AsyncClient(base_url=w.url, trust_env=False, timeout=30) as client,
                client.stream(
                    "POST", "/v1/messages", json=message_body(stream=True, content=f"x{i}"),
                    headers={"x-api-key": key, "x-balancer-no-dedup": "1"},
                ) as r,
            ):  # fmt: skip
                statuses.append(r.status_code)
                await r.aread()

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(8):  # new connections: the kernel spreads them over both workers
                    n.start_soon(one, i)
                await trio.sleep(2)
                pause.release()
        # Both workers refused the reload (a limit each would count apart); they go on with the
        # config they had, which has no limits at all.
        text = log.read_text()
        assert text.count("config.reload_failed") == 2 and "not with several workers" in text, text
    finally:
        pause.release()
        await finish(w.process, kids)
