"""The one place a request is recorded: its log line, its metrics, its ledger record.

:meth:`RecordSink.finish` is reached from a ``finally`` of the request's handler and of its
flight (a leader's flight may end after the handler: a shared stream finishing into the
cache); whichever ends last makes the record (:meth:`RequestContext.claim_record`). The
record itself is built by the pure functions of :mod:`.records`.
"""

from __future__ import annotations

import time

import attrs

from trio_balancer.app.metrics import normalise_model
from trio_balancer.app.records import RequestContext, fallback_record, request_record
from trio_balancer.app.state import AppState
from trio_balancer.app.writer import CUT
from trio_balancer.ledger import Record
from trio_balancer.logging import get_logger
from trio_balancer.protocol.usage import ESTIMATED, PARTIAL

__all__ = ["RecordSink"]

log = get_logger("trio_balancer.app.accounting")


# What the one-line summary of a finished request says, from its record.
_END_FIELDS = ("model", "provider", "status", "outcome", "events", "bytes", "input_tokens", "output_tokens",
               "usage_source", "duration_ms")  # fmt: skip


class RecordSink:
    """Where every finished request goes: its log line, the metrics, the ledger. One place."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    async def finish(self, ctx: RequestContext) -> None:
        """Record ``ctx`` if it is its time (:meth:`RequestContext.claim_record`); never raises
        for a bug in the accounting itself: the record is then the flagged fallback."""
        if not ctx.claim_record():
            return
        try:
            record = request_record(ctx, self._state.prices)
        except Exception:
            log.exception("accounting.crash", request_id=ctx.id)
            record = fallback_record(ctx)
        record = attrs.evolve(record, instance=self._state.budgets.instance)
        _log_end(ctx, record)
        try:
            self._count(record)
        except Exception:  # a metrics bug must not cost the ledger its record
            log.exception("metrics.record_failed", request_id=record.id)
        state = self._state
        try:  # counts for the key's next request at once
            alerts = state.budgets.recorded(record, state.keys_by_name.get(record.client))
        except Exception:
            log.exception("budgets.record_failed", request_id=record.id)
            alerts = []
        if state.notifier is not None:
            for alert in alerts:
                state.notifier.post(alert)
        if self._state.ledger is not None:
            await self._state.ledger.record(record)

    def _count(self, record: Record) -> None:
        state = self._state
        model = normalise_model(record.upstream_model or record.model, state.known_models)
        state.metrics.count(record, model)
        state.stats.request(
            time.time(),
            status=record.status,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            ttfb=None if record.ttfb_ms is None else record.ttfb_ms / 1000,
        )


def _log_end(ctx: RequestContext, record: Record) -> None:
    if record.outcome == CUT:
        log.warning("request.cut", request_id=ctx.id, status=record.status, dedup=record.dedup_role)
    log.info(
        "request.end",
        request_id=ctx.id,
        attempts=len(record.attempts),
        error=record.error_type,
        dedup=record.dedup_role,
        **{name: getattr(record, name) for name in _END_FIELDS},
    )
    if record.usage_source in (ESTIMATED, PARTIAL):
        log.warning(
            "usage.estimated",
            request_id=ctx.id,
            provider=record.provider,
            usage_source=record.usage_source,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
        )
