"""How the app is put behind Hypercorn: one path for ``trio-balancer serve`` and the tests.

The settings here are not cosmetic (the backlog, the header limit, the keep-alive timeout each
fixed a failure seen under load), so nothing starts Hypercorn any other way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

from trio_balancer.app.asgi import BalancerApp
from trio_balancer.config import Config

__all__ = ["hypercorn_config", "serve"]


def hypercorn_config(config: Config, host: str, port: int) -> hypercorn.config.Config:
    """Hypercorn's settings for serving ``config`` on ``host:port`` (port 0: any free one)."""
    hc = hypercorn.config.Config()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = config.server.grace_period_s
    hc.accesslog = None
    hc.errorlog = "-"
    hc.keep_alive_timeout = 75  # above common load balancers' idle timeouts (60 s)
    # Hypercorn's default backlog (100) resets connections when hundreds of clients connect
    # at once (Claude Code sub-agents, a team's morning); the kernel caps it at somaxconn.
    hc.backlog = 4096
    # Oversized headers are answered by the app in Anthropic's error shape; Hypercorn's own
    # limit only has to be above ours.
    hc.h11_max_incomplete_size = config.server.max_header_bytes * 2 + 16 * 1024
    return hc


async def serve(
    app: BalancerApp,
    hc: hypercorn.config.Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns; ``task_status`` gets the bound URLs."""
    # Hypercorn types ASGI messages as TypedDicts; our app takes plain mappings.
    run = partial(hypercorn.trio.serve, app, hc, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
    await run(task_status=task_status)
