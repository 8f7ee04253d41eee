"""The operator's webhook: budgets passing 80 % and 100 %, providers cooling down and recovering.

Events are handed to :meth:`Notifier.post`, which never waits: they queue on a bounded channel
(when it is full, because the webhook is down or slow, new events are dropped and counted), and
one task posts them in order as JSON, each with at most ``[alerts] retries`` more tries after
the first (1 s, 2 s, 4 s... apart, each bounded by ``timeout_s``). So a webhook that hangs or
fails costs requests nothing, and a storm of events costs it a bounded queue.

Each instance posts what it saw itself: with several, a provider's cooldown may be told by each
that met it. The webhook URL (often a secret itself) is never logged: only its host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import trio

from trio_balancer.config import AlertsConfig
from trio_balancer.logging import get_logger
from trio_balancer.redaction import url_host

__all__ = ["QUEUE", "Notifier"]

log = get_logger("trio_balancer.app.alerts")

QUEUE = 256  # events waiting for the webhook
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


class Notifier:
    """The one task that posts alerts, and the bounded queue in front of it."""

    def __init__(self, config: Callable[[], AlertsConfig], instance: Callable[[], str]) -> None:
        self._config = config  # read at each post: a reload may change or remove the webhook
        self._instance = instance  # the id this process's records carry now
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](QUEUE)
        self.sent = 0
        self.failed = 0  # given up after every try
        self.dropped = 0  # the queue was full
        self.sleep = trio.sleep  # tests: how the backoff waits

    def post(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for the webhook, if there is one; never waits."""
        if self._config().webhook_url is None:
            return
        event = {**event, "instance": self._instance(), "at": time.time()}
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("alerts.dropped", dropped=self.dropped, alert=event.get("event"))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
            task_status.started()
            async for event in self._recv:
                await self._deliver(client, event)

    async def _deliver(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        config = self._config()
        url = config.webhook_url
        if url is None:
            return
        wait = BACKOFF_FIRST_S
        for attempt in range(config.retries + 1):
            problem = await _post(client, url, event, config.timeout_s)
            if problem is None:
                self.sent += 1
                return
            log.warning("alerts.post_failed", webhook=url_host(url), attempt=attempt + 1, error=problem)
            if attempt < config.retries:
                await self.sleep(wait)
                wait = min(BACKOFF_MAX_S, wait * 2)
        self.failed += 1
        log.error("alerts.given_up", webhook=url_host(url), alert=event)

    def view(self) -> dict[str, Any]:
        return {
            "webhook": url_host(self._config().webhook_url),
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "queued": self._recv.statistics().current_buffer_used,
        }


async def _post(client: httpx.AsyncClient, url: str, event: dict[str, Any], timeout_s: float) -> str | None:
    """Post once; None when the webhook took it (2xx), else what went wrong, without the URL."""
    try:
        with trio.fail_after(timeout_s):
            response = await client.post(url, json=event, timeout=timeout_s)
    except trio.TooSlowError:
        return f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"
