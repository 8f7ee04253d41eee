"""Every Prometheus metric the balancer exports, in one place.

Each app has its own ``CollectorRegistry`` (several apps can live in one process: tests, or an
embedding). Label sets are bounded: providers come from the config, models are normalised to
the ids the config knows (anything else is ``other``), statuses are numbers, and no request id,
client key or free text ever becomes a label.

Under ``serve --workers`` every worker writes its counters and histograms to files in
``PROMETHEUS_MULTIPROC_DIR`` (the parent makes the directory), and any worker's ``/metrics``
sums them all (prometheus-client's multiprocess mode): a scrape sees the whole balancer, not
the worker it reached. The gauges of flights and listeners are summed over live workers; the
values read at scrape time (provider states) are the answering worker's.

The per-event forward latency is the time from the upstream bytes being read to the complete
event(s) being handed on: to the client's socket when one client waits on an unshared stream
(the writer's hand-off, ``flight/byte_queue.py``), else to every listener's queue. Its buckets
go down to 25 microseconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trio_balancer.ledger import Record
from trio_balancer.protocol.usage import ESTIMATED, PARTIAL

__all__ = ["CONTENT_TYPE", "MULTIPROCESS_ENV", "Metrics", "normalise_model"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it at import

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DATE_SUFFIX = re.compile(r"-\d{8}$")
_FORWARD_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)
_TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


def normalise_model(model: str | None, known: Iterable[str]) -> str:
    """A bounded label: a known model id (dated snapshots folded into their alias) or ``other``."""
    if not model:
        return "none"
    base = _DATE_SUFFIX.sub("", model)
    known_set = set(known)
    if model in known_set:
        return model
    if base in known_set:
        return base
    return "other"


class _Live(Collector):
    """Values read at scrape time (provider states, queue sizes) rather than kept up to date."""

    def __init__(self, read: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._read()


class Metrics:
    """The app's Prometheus registry and every counter and histogram in it."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "trio_balancer_requests", "Requests answered, by provider, model and HTTP status",
            ["provider", "model", "status"], registry=r,
        )  # fmt: skip
        self.ttfb = Histogram(
            "trio_balancer_upstream_ttfb_seconds", "Time from sending a request upstream to its response headers",
            ["provider"], buckets=_TTFB_BUCKETS, registry=r,
        )  # fmt: skip
        self.forward = Histogram(
            "trio_balancer_forward_latency_seconds",
            "Per-event latency: upstream bytes read -> complete event handed to the client (or its queue)",
            buckets=_FORWARD_BUCKETS, registry=r,
        )  # fmt: skip
        self.events = Counter(
            "trio_balancer_stream_events", "SSE events streamed to clients", ["provider"], registry=r
        )
        self.bytes = Counter(
            "trio_balancer_stream_bytes", "Body bytes streamed to clients", ["provider"], registry=r
        )
        self.active_streams = Gauge(
            "trio_balancer_active_flights", "Upstream responses in progress", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.active_listeners = Gauge(
            "trio_balancer_active_listeners",
            "Clients being answered",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.failovers = Counter(
            "trio_balancer_failovers", "Attempts abandoned for the next provider, by provider and reason",
            ["provider", "reason"], registry=r,
        )  # fmt: skip
        self.dedup = Counter("trio_balancer_dedup", "Requests by dedup role", ["role"], registry=r)
        self.tokens = Counter(
            "trio_balancer_tokens", "Tokens by provider, model, type (input, output, cache_read, cache_write)",
            ["provider", "model", "type"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "trio_balancer_cost_usd", "Cost in USD by provider and model", ["provider", "model"], registry=r
        )
        self.estimated = Counter(
            "trio_balancer_usage_estimated", "Requests whose usage was estimated (partial or none reported)",
            ["provider"], registry=r,
        )  # fmt: skip
        self._live: list[Callable[[], Iterable[GaugeMetricFamily]]] = []
        r.register(_Live(self._collect_live))

    def add_live(self, read: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._live.append(read)

    def _collect_live(self) -> Iterable[GaugeMetricFamily]:
        for read in self._live:
            yield from read()

    def count(self, record: Record, model: str) -> None:
        """A finished request's counters; ``model`` is its label, already normalised."""
        provider = record.provider or "none"
        self.requests.labels(provider, model, str(record.status or 0)).inc()
        self.dedup.labels(record.dedup_role).inc()
        if record.ttfb_ms is not None and record.provider is not None:
            self.ttfb.labels(provider).observe(record.ttfb_ms / 1000)
        if record.events or record.bytes:
            self.events.labels(provider).inc(record.events)
            self.bytes.labels(provider).inc(record.bytes)
        for kind, n in (
            ("input", record.input_tokens),
            ("output", record.output_tokens),
            ("cache_read", record.cache_read_input_tokens),
            ("cache_write", record.cache_creation_input_tokens),
        ):
            if n:
                self.tokens.labels(provider, model, kind).inc(n)
        if record.cost_usd:
            self.cost.labels(provider, model).inc(record.cost_usd)
        if record.usage_source in (ESTIMATED, PARTIAL):
            self.estimated.labels(provider).inc()

    def render(self) -> bytes:
        if not os.environ.get(MULTIPROCESS_ENV):
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)  # type: ignore[no-untyped-call]
        every_worker.register(_Live(self._collect_live))
        return generate_latest(every_worker)
