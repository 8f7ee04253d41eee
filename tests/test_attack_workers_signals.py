"""Attacks on ``serve --workers N`` (issue 20): SIGINT, a worker stopped on its own, auto."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from trio_balancer.app.workers import worker_count

from .fakes import FakeUpstream, Reply, anthropic_text_events
from .test_attack_workers_lifecycle import children, finish
from .test_workers import start, write_config

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="SO_REUSEPORT workers: Linux")


def test_auto_is_one_per_core_this_process_may_use() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))


async def test_sigint_drains_and_exits_zero(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await FakeUpstream(Reply(steps=[*anthropic_text_events(["ok"])])).start(nursery)
    write_config(tmp_path / "b.toml", up.url, tmp_path / "l.sqlite3", models=["m"])
    w = await start(nursery, tmp_path / "b.toml")
    kids = children(w.process.pid)
    try:
        w.process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await w.process.wait() == 0
        assert (tmp_path / "b.log").read_text().count("SIGINT, shutting down gracefully") == 2
    finally:
        await finish(w.process, kids)


async def test_a_worker_stopped_on_its_own_is_started_again(nursery: trio.Nursery, tmp_path: Path) -> None:
    """`kill <worker pid>` (an operator, a script hunting a stuck process): the worker drains
    and exits 0, nobody asked the balancer to stop, yet it is never started again: the
    balancer runs on N-1 workers without a word."""
    up = await FakeUpstream(Reply(steps=[*anthropic_text_events(["ok"])])).start(nursery)
    write_config(tmp_path / "b.toml", up.url, tmp_path / "l.sqlite3", models=["m"])
    w = await start(nursery, tmp_path / "b.toml")
    pids = await w.seen(40)
    kids = children(w.process.pid)
    try:
        os.kill(pids["1/2"], signal.SIGTERM)
        with trio.move_on_after(15):
            while True:
                now = await w.seen(10)
                if now.get("1/2") not in (None, pids["1/2"]):
                    break
                await trio.sleep(0.3)
        assert set(now) == {"0/2", "1/2"}, f"workers serving now: {now}"
    finally:
        await finish(w.process, kids)
