"""``serve --workers N``: N balancer processes on one port, and the parent that keeps them.

Each worker is a whole ``trio-balancer serve`` (its own app, providers, ledger writer) bound to
the same address with ``SO_REUSEPORT``, so the kernel spreads new connections across them. The
parent binds the port first (without listening) so that port 0 becomes one real port all the
workers share, then starts them, and from then on only:

- forwards SIGINT/SIGTERM (each worker drains its streams for ``grace_period_s``) and SIGHUP
  (each worker re-reads the config) to every worker;
- starts a worker again when it ends without being asked (it died, refused a changed config,
  or was stopped on its own), after 1 s doubling to 30 s; after 5 such ends within a minute it
  gives up and stops the whole balancer;
- exits when every worker has, with the first non-zero status.

What is per worker, and what is shared, is in the README ("Several workers"). In short: the
ledger (every worker writes its own records to it), budgets (read back from it) are shared; so
are limits, health and the cache when ``[cluster] redis_url`` is set. Without Redis, per-key
limits would be counted by each worker apart, so that combination is refused at start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from trio_balancer.app.metrics import MULTIPROCESS_ENV
from trio_balancer.config import Config
from trio_balancer.logging import get_logger

__all__ = [
    "PARENT_ENV",
    "WORKER_ENV",
    "WorkerSet",
    "limits_need_redis",
    "metrics_directory",
    "reserve_port",
    "worker_count",
]

log = get_logger("trio_balancer.app.workers")

WORKER_ENV = "TRIO_BALANCER_WORKER"  # "i/N" in a worker's environment
PARENT_ENV = "TRIO_BALANCER_PARENT"  # the parent's pid: a worker whose parent is gone stops
METRICS_PREFIX = "trio-balancer-metrics-"
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
DEATHS_PER_MINUTE = 5


def worker_count(asked: int) -> int:
    """``asked`` workers; 0 means one per core this process may run on."""
    if asked > 0:
        return asked
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def limits_need_redis(config: Config) -> str | None:
    """Why ``config`` cannot run on several workers without Redis, or None."""
    if config.cluster.redis_url:
        return None
    limited = [k.name for k in config.server.client_keys if k.max_concurrent or k.requests_per_minute]
    if limited:
        return (
            f"client keys {', '.join(map(repr, limited))} have max_concurrent or requests_per_minute, which"
            " each worker would count apart: set [cluster] redis_url (they are shared through it), or use one worker"
        )
    return None


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` and not listening: it holds the
    port (port 0: picks one) for the workers, who bind it too and listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bound first without SO_REUSEPORT, which fails if any program listens on the port (with
    # the option the kernel would split clients between it and us; found by attack). A program
    # of the same user can still join while the workers run: that is what SO_REUSEPORT is, and
    # why the balancer should run as a user of its own.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # OSError: in use
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _metrics_gone(pid: int) -> None:
    """A worker ended: its live gauges leave the sums (its counters stay: they happened)."""
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def metrics_directory() -> str:
    """A fresh directory for the workers' metric files, named in their environment; those of
    earlier balancers that were killed (their pid is gone) are removed first."""
    for old in Path(tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*-*"):
        pid = old.name.removeprefix(METRICS_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROCESS_ENV] = path
    return path


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@attrs.define
class WorkerSet:
    """The running workers: one restart loop each, signals forwarded to all."""

    command: Sequence[str]  # how a worker is started, without its number
    count: int
    stopping: bool = False
    processes: dict[int, trio.Process] = attrs.Factory(dict)
    status: int = 0
    _deaths: list[float] = attrs.Factory(list)

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_signals)
            async with trio.open_nursery() as workers:
                for i in range(self.count):
                    workers.start_soon(self._keep, i)
            nursery.cancel_scope.cancel()  # every worker has ended: stop forwarding
        return self.status

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; start it again when it dies while nobody asked it to stop."""
        wait = RESTART_FIRST_S
        while True:
            if self.stopping:  # asked to stop while this worker waited to start again
                return
            env = {**os.environ, WORKER_ENV: f"{index}/{self.count}", PARENT_ENV: str(os.getpid())}
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which forwards
            # it once (a second SIGINT would cut a draining worker short).
            process = await trio.lowlevel.open_process(list(self.command), env=env, start_new_session=True)
            self.processes[index] = process
            code = await process.wait()
            del self.processes[index]
            _metrics_gone(process.pid)
            if self.stopping:
                if code != 0:  # cut short (a second SIGTERM) or failed while draining
                    self.status = self.status or (code if code > 0 else 1)
                return
            # Ended without being asked (died, refused a changed config, or was stopped on its
            # own): started again, so the balancer keeps its N workers.
            now = trio.current_time()
            self._deaths = [t for t in self._deaths if now - t < 60] + [now]
            log.error("worker.ended", worker=index, status=code, restart_in_s=wait)
            if len(self._deaths) >= DEATHS_PER_MINUTE:
                log.critical("worker.giving_up", deaths_per_minute=len(self._deaths))
                self.status = code if code > 0 else 1
                await self.stop(signal.SIGTERM)
                return
            await trio.sleep(wait)
            wait = min(RESTART_MAX_S, wait * 2)

    async def stop(self, signum: int) -> None:
        self.stopping = True
        await self.signal(signum)

    async def signal(self, signum: int) -> None:
        for process in list(self.processes.values()):
            if process.returncode is None:
                process.send_signal(signum)

    async def _forward_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("workers.reload", signal="SIGHUP")
                    await self.signal(signum)
                else:
                    log.info("workers.drain", signal=signal.Signals(signum).name)
                    await self.stop(signum)
