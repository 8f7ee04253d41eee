"""A ``POST /v1/messages/count_tokens`` flight: an optional endpoint that never costs a provider.

Claude Code copes without it (it estimates) and calls it in bursts of 40-50 a second, while
many providers lack it: one gateway suspended a model for 12 h over one 404. So a count's
outcome is no verdict on a provider's health (its failures still fail over to the next one),
and a provider without the endpoint (OpenAI's format; ``capabilities.count_tokens = false``;
a 404 or 405 answer) gets the balancer's own estimate (``protocol/tokens.py``), marked with
``x-balancer-estimated: 1``. The app shares identical counts (``app/messages.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from trio_balancer.errors import JSON_HEADERS
from trio_balancer.flight.failures import AttemptFailed
from trio_balancer.flight.flight import Flight
from trio_balancer.flight.hub import Head, Item
from trio_balancer.logging import get_logger
from trio_balancer.policy.failover import CLIENT_FAULT
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol.answers import answer_format
from trio_balancer.protocol.tokens import estimate_request
from trio_balancer.protocol.usage import Usage
from trio_balancer.upstream.providers import ProviderRuntime

__all__ = ["ESTIMATED_HEADER", "NO_COUNT_ENDPOINT", "CountFlight"]

log = get_logger("trio_balancer.flight.counting")

# What a provider without the endpoint answers to it (many Anthropic-compatible servers).
NO_COUNT_ENDPOINT = (404, 405)
ESTIMATED_HEADER = (b"x-balancer-estimated", b"1")


class CountFlight(Flight):
    """A token count's flight: the plan's providers asked in turn, health left alone."""

    judges_health = False
    _replaced = False  # a provider's 200 was no count: our estimate went instead, the rest is dropped
    _count_reader: Callable[[bytes], bytes | None] | None = None  # the provider kind's count answer

    async def commit(self, head: Head, first: bytes | None, *, held_events: int = 0) -> None:
        """A 200 that is not a count (an HTML page, a proxy's error) is not relayed: the
        client gets our estimate, said as such."""
        if head.status == 200 and self._count_reader is not None and first is not None:
            first = self._count_reader(first) or first  # a cloud's own count answer, as Anthropic's
        if head.status == 200 and not self._replaced and not _is_count(first):
            log.warning("count.not_a_count", provider=self._provider)
            self._replaced = True
            await self._estimate()
            return
        await super().commit(head, first, held_events=held_events)

    async def publish(self, item: Item) -> None:
        if not self._replaced:
            await super().publish(item)

    def _usage(self) -> Usage | None:
        return None  # counting tokens is free

    async def _try(self, attempt: Attempt, runtime: ProviderRuntime) -> None:
        provider = runtime.config
        self._count_reader = answer_format(provider.kind).count
        if not runtime.family.counts_tokens:
            self._provider, self._model = provider.name, attempt.model
            await self._estimate()  # never asked: it has no such endpoint
            return
        await super()._try(attempt, runtime)

    async def _attempt(self, attempt: Attempt, runtime: ProviderRuntime) -> None:
        try:
            await super()._attempt(attempt, runtime)
        except AttemptFailed as failure:
            if failure.verdict.not_here:  # final: our estimate, not another provider's call
                failure.verdict = CLIENT_FAULT
            raise

    async def _relay_answer(self, failure: AttemptFailed) -> None:
        """A provider without the endpoint: our estimate at once (a count is not worth
        another provider's call); any other answer as a flight relays it."""
        if failure.answer is not None and failure.answer.status in NO_COUNT_ENDPOINT:
            await self._estimate()
            return
        await super()._relay_answer(failure)

    async def _estimate(self) -> None:
        self._replaced = True  # whatever the provider sends after this is not the answer
        body = json.dumps({"input_tokens": estimate_request(self.request.payload)}).encode()
        await self.commit(Head(200, [*JSON_HEADERS, ESTIMATED_HEADER]), body)
        self._completed = True


def _is_count(body: bytes | None) -> bool:
    """A count_tokens answer: a JSON object with an integer ``input_tokens``."""
    try:
        value = json.loads(body or b"")
    except (ValueError, RecursionError):
        return False
    tokens = value.get("input_tokens") if isinstance(value, dict) else None
    return isinstance(tokens, int) and not isinstance(tokens, bool)
