"""One request's upstream lifetime: try targets until one commits, then stream it to listeners.

A flight runs in the app's nursery, not in the handler of the request that started it, so a
stream can outlive the client that asked for it while others still listen. Each listener gets
its own queue, bounded in bytes; the flight's one task reads the upstream, decodes SSE
incrementally (sans-I/O, inline: a second task and channel hop per event would cost more than
the decoding itself) and publishes what is complete. The last listener leaving cancels the
flight, which closes the upstream response and releases its connection at once.

Commit point: nothing reaches a listener until the response is known to be good. For SSE that
is the first content-bearing event (``content_block_start`` of a non-empty block, the first
``content_block_delta``, or a complete empty message); ``message_start`` and ``ping`` before it
are held. For JSON it is the complete body. Until then any failure moves to the next target,
invisibly; after it, a failure becomes an SSE ``event: error`` and the end of the stream.

What a listener receives: exactly one :class:`Head`, then body chunks (``bytes``), then the
queue ends. Each listener's queue is bounded in bytes (:mod:`.byte_queue`), so a slow client
slows its flight rather than filling memory. An :class:`Abort` in place of the end means the body is broken and the client's
connection must be dropped rather than ended cleanly (a cut JSON body).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, Protocol, cast

import attrs
import httpx
import trio

from trio_balancer.app.respond import JSON_HEADERS
from trio_balancer.config import ProviderConfig
from trio_balancer.errors import (
    BalancerError,
    InternalError,
    Overloaded,
    ProviderError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
    error_type_for_status,
)
from trio_balancer.flight.byte_queue import ByteQueue
from trio_balancer.logging import debug_enabled, get_logger
from trio_balancer.policy.failover import Verdict, classify_error_type, classify_status
from trio_balancer.policy.health import FailureKind, ProviderHealth, State
from trio_balancer.policy.ratelimits import read_headers, retry_after_seconds
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol.convert import (
    ConversionError,
    RequestOptions,
    StreamConverter,
    UpstreamStreamError,
    openai_error_to_anthropic,
    openai_error_type,
    to_anthropic_message,
    to_openai,
)
from trio_balancer.protocol.sse import (
    DEFAULT_MAX_EVENT_BYTES,
    EventTooLarge,
    MalformedEventData,
    SSEDecoder,
    SSEEvent,
    encode_event,
)
from trio_balancer.protocol.tokens import estimate_request
from trio_balancer.protocol.usage import Usage, UsageTracker
from trio_balancer.redaction import scrub
from trio_balancer.upstream.headers import request_headers, response_headers, upstream_url
from trio_balancer.upstream.providers import ProviderRuntime

__all__ = [
    "LISTENER_BUFFER_BYTES",
    "Abort",
    "AttemptRecord",
    "Flight",
    "Head",
    "Item",
    "Listener",
    "SharePolicy",
    "UpstreamRequest",
    "item_size",
]

log = get_logger("trio_balancer.flight")

# Bytes queued for one listener before the flight waits for it. With one listener this is
# plain backpressure: it only absorbs scheduling jitter, never a response, so a client that
# stops reading stops the flight, and the flight stops reading its upstream.
LISTENER_BUFFER_BYTES = 64 * 1024
# What a head or an abort counts for in a listener's byte bound.
_MARKER_BYTES = 64
# An error body from a provider is read whole before it is relayed; this bounds it.
MAX_ERROR_BODY = 256 * 1024
# A JSON (non-stream) answer is held until complete so a cut body can still fail over. Past
# this size we commit and stream the rest: no real message is that large.
MAX_HELD_JSON = 32 * 1024 * 1024
# Slide the idle deadline at most this often: moving a cancel scope deadline re-sorts trio's
# deadline heap, so it is not free per event, and a second of slack on a 300 s bound is noise.
# Never more than a quarter of the idle bound itself, or a short bound would fire on a live
# stream (it did: 15 events in 0.47 s against a 0.5 s bound).
_IDLE_SLIDE_S = 1.0
# Backoff before retrying the same provider after a connect error (doubles each time).
_RETRY_BACKOFF_S = 0.2
# A converted stream silent this long gets a ping, as Anthropic's own streams do, so that
# clients and proxies in between do not take the silence for a dead connection.
PING_INTERVAL_S = 10.0
PING = encode_event("ping", '{"type":"ping"}')


@attrs.frozen
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]


@attrs.frozen
class Abort:
    reason: str


Item = Head | bytes | Abort
Listener = ByteQueue[Item]


def item_size(item: Item) -> int:
    """An item's weight in a listener's byte bound: its length for a chunk."""
    if type(item) is bytes:
        return len(item)
    if isinstance(item, Head):
        return _MARKER_BYTES + sum(len(n) + len(v) for n, v in item.headers)
    return _MARKER_BYTES


@attrs.frozen
class UpstreamRequest:
    """What the client asked for, ready to be sent to any provider."""

    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    payload: Mapping[str, Any]
    model: str
    stream: bool

    def body_for(self, model: str) -> bytes:
        """The body to send upstream: the client's own bytes unless the model is renamed."""
        if model == self.model:
            return self.body
        return json.dumps({**self.payload, "model": model}, ensure_ascii=False).encode()

    @property
    def session(self) -> str | None:
        metadata = self.payload.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return user if isinstance(user, str) and user else None


@attrs.frozen
class AttemptRecord:
    """One try at one provider, for logs, the ledger and the client's final error."""

    provider: str
    model: str
    error: str | None  # None: this attempt served the response
    status: int | None = None


@attrs.frozen
class _Answer:
    """An HTTP error answer from a provider, ready to relay as it was sent."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class AttemptFailed(Exception):
    """One attempt failed; ``verdict`` says whether another provider may do better."""

    def __init__(
        self,
        verdict: Verdict,
        error: BalancerError,
        *,
        answer: _Answer | None = None,
        retry_after: float | None = None,
        connect: bool = False,
        sent_to_client: bool = False,
    ) -> None:
        super().__init__(error.message)
        self.verdict = verdict
        self.error = error
        self.answer = answer
        self.retry_after = retry_after
        self.connect = connect  # nothing reached the provider: safe to retry on it
        self.sent_to_client = sent_to_client  # the provider's own error event was relayed


class FlightObserver(Protocol):
    """What a flight reports as it goes (metrics, the status page); the app implements it."""

    def forward(self, seconds: float) -> None: ...
    def failover(self, provider: str, reason: str) -> None: ...
    def health_changed(self, provider: str, health: ProviderHealth) -> None: ...


class _Unobserved:
    def forward(self, seconds: float) -> None:
        pass

    def failover(self, provider: str, reason: str) -> None:
        pass

    def health_changed(self, provider: str, health: ProviderHealth) -> None:
        pass


@attrs.frozen
class SharePolicy:
    """How a flight treats several listeners (dedup); the defaults are one listener's."""

    keep_history: bool = False  # replay for late joiners and the cache
    # With several listeners, how far one may fall behind the flight (events and bytes queued
    # for it) before the flight waits for it, and how long it waits before cutting it off.
    max_lag_events: int = 1024
    max_lag_bytes: int = 1024 * 1024
    max_lag_s: float = 10.0
    finish_orphans: bool = False  # keep streaming into the cache after the last listener left
    # A response whose history passes this is no longer shared with late joiners nor cached,
    # and its history is let go: a shared flight never holds more than this for replay.
    max_shared_bytes: int = 4 * 1024 * 1024


class Flight:
    def __init__(
        self,
        request: UpstreamRequest,
        attempts: list[Attempt],
        providers: Mapping[str, ProviderRuntime],
        share: SharePolicy = SharePolicy(),
        observer: FlightObserver | None = None,
        *,
        max_response_bytes: int = 256 * 1024 * 1024,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.request = request
        self.max_response_bytes = max_response_bytes
        self.max_event_bytes = max_event_bytes
        self.observer: FlightObserver = observer or _Unobserved()
        self._trace = debug_enabled()  # per-event debug lines, decided once per flight
        self.attempts = attempts
        self._providers = providers
        self.share = share
        self._listeners: list[Listener] = []
        self._dropped: set[Listener] = set()
        self.history: list[Item] = []
        self._history_bytes = 0
        self._history_dropped = False
        self.cancel_scope = trio.CancelScope()
        self.done = trio.Event()
        # What happened, for logs, metrics, the ledger and tests.
        self.tried: list[AttemptRecord] = []
        self.provider: str | None = None
        self.upstream_model: str | None = None
        self.status: int | None = None
        self.committed = False
        self.completed = False  # the upstream response ended normally (message_stop for SSE)
        self.events = 0
        self.bytes = 0
        self.error: str | None = None
        self.ttfb: float | None = None
        self.usage_reported: bool | None = None  # for converted answers: did the upstream send usage
        self.tracker = UsageTracker()
        self._sse = False

    @property
    def sse(self) -> bool:
        """The response is an event stream (rather than a JSON body)."""
        return self._sse

    # -- listeners ---------------------------------------------------------------------------

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def joinable(self) -> bool:
        """A late listener can still get the whole response (the history is complete)."""
        return self.share.keep_history and not self._history_dropped and not self.done.is_set()

    def subscribe(self) -> Listener:
        """A new listener; a late one first gets everything published so far, in order.

        The replay and the registration happen without a checkpoint in between, so the
        listener sees every item exactly once whatever the flight does meanwhile. The replay
        is already in memory (the history), so it goes in past the queue's bound.
        """
        listener: Listener = ByteQueue(LISTENER_BUFFER_BYTES, item_size)
        for item in self.history:
            listener.send_nowait(item, force=True)
        if self.done.is_set():
            listener.close()
        else:
            self._listeners.append(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        """A listener leaves; the last one leaving before the end cancels the flight."""
        listener.abandon()
        if listener in self._listeners:
            self._listeners.remove(listener)
        if not self._listeners and not self.done.is_set() and not self.share.finish_orphans:
            self.cancel_scope.cancel()

    def was_dropped(self, listener: Listener) -> bool:
        """This listener fell further behind than the bounds allow and was cut off."""
        return listener in self._dropped

    def _keep(self, item: Item) -> None:
        """Remember ``item`` for late listeners and the cache, up to the history bound."""
        if self._history_dropped:
            return
        self._history_bytes += item_size(item)
        if self._history_bytes > self.share.max_shared_bytes:
            # Too large to share or cache: let the memory go; later requests get their own flight.
            self._history_dropped = True
            self.history = []
            return
        self.history.append(item)

    async def _publish(self, item: Item) -> None:
        if self.share.keep_history:
            self._keep(item)
        listeners = self._listeners
        if len(listeners) == 1:  # one listener: plain backpressure, nobody else to protect
            listener = listeners[0]
            try:
                await listener.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(listener)
            return
        # Several: nobody waits for a slow one until it is past the lag bounds.
        share = self.share
        size = item_size(item)
        slow = []
        for listener in list(listeners):
            if listener.abandoned:
                self.unsubscribe(listener)
            elif listener.has_room(size, share.max_lag_bytes, share.max_lag_events):
                listener.send_nowait(item, force=True)
            else:
                slow.append(listener)
        if slow:
            await self._wait_for_slow(slow, item)

    async def _wait_for_slow(self, slow: list[Listener], item: Item) -> None:
        """Give listeners past the lag bounds ``max_lag_s`` to catch up, then cut them off."""
        share = self.share
        with trio.move_on_after(share.max_lag_s):
            while slow:
                listener = slow[0]
                try:
                    await listener.send(item, max_bytes=share.max_lag_bytes, max_items=share.max_lag_events)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.unsubscribe(listener)
                slow.pop(0)
        for listener in slow:
            self._dropped.add(listener)
            if listener in self._listeners:
                self._listeners.remove(listener)
            listener.close()
            log.warning(
                "listener.dropped",
                lag_events=len(listener),
                lag_bytes=listener.queued_bytes,
                lag_s=share.max_lag_s,
            )
        if not self._listeners and not share.finish_orphans:
            self.cancel_scope.cancel()

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        held = {self._providers[a.provider.name] for a in self.attempts}
        for runtime in held:
            runtime.acquire()
        try:
            with self.cancel_scope:
                try:
                    await self._serve()
                except BalancerError as exc:
                    await self._fail(exc)
                except Exception:  # a bug of ours: answer the client, keep the app alive
                    log.exception("flight.crash", provider=self.provider)
                    await self._fail(InternalError("internal error in the balancer"))
        finally:
            for runtime in held:
                runtime.release()
            for listener in self._listeners:
                listener.close()
            self.done.set()

    async def _fail(self, exc: BalancerError) -> None:
        self.error = exc.error_type
        if not self.committed:
            self.status = exc.status
            headers = JSON_HEADERS + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            await self._commit(Head(exc.status, headers), exc.body())
        elif self._sse:
            await self._publish(exc.event())
        else:
            await self._publish(Abort(exc.message))

    async def _commit(self, head: Head, first: bytes | None) -> None:
        self.committed = True
        self.status = head.status
        log.info("stream.commit", provider=self.provider, status=head.status, events_held=self.events)
        await self._publish(head)
        if first:
            await self._publish(first)

    async def _serve(self) -> None:
        last: AttemptFailed | None = None
        for n, attempt in enumerate(self.attempts):
            runtime = self._providers[attempt.provider.name]
            try:
                await self._attempt(attempt, runtime)
                return
            except AttemptFailed as failure:
                self.tried.append(
                    AttemptRecord(
                        runtime.name,
                        attempt.model,
                        failure.error.message,
                        failure.answer.status if failure.answer else None,
                    )
                )
                if self.committed:
                    self.error = failure.error.error_type
                    if not failure.sent_to_client:
                        await self._fail(failure.error)
                    return
                if not failure.verdict.retry:
                    await self._relay_answer(failure)
                    return
                last = failure
                self.observer.failover(
                    runtime.name, failure.verdict.kind.value if failure.verdict.kind else "client"
                )
                if n + 1 < len(self.attempts):
                    log.warning(
                        "failover",
                        provider=runtime.name,
                        reason=failure.error.message,
                        next=self.attempts[n + 1].provider.name,
                    )
        assert last is not None
        if len(self.tried) == 1:
            await self._relay_answer(last)  # one provider: its own answer says it best
            return
        raise self._all_failed()

    def usage(self) -> Usage | None:
        """What this response used; None when no provider produced one (errors, refusals)."""
        if not self.committed or self.status != 200:
            return None
        if self.request.path.endswith("/count_tokens"):
            return None  # counting tokens is free
        return self.tracker.result(self.request.payload, trust_output=self.usage_reported is not False)

    def _all_failed(self) -> Overloaded:
        now = trio.current_time()
        summary = "; ".join(f"{r.provider}: {r.error}" for r in self.tried)
        waits = [
            self._providers[r.provider].health.cooling_until - now
            for r in self.tried
            if self._providers[r.provider].health.cooling_until > now
        ]
        headers = {"retry-after": str(max(1, math.ceil(min(waits))))} if waits else {}
        return Overloaded(f"every provider for this model failed ({summary})", headers=headers)

    async def _relay_answer(self, failure: AttemptFailed) -> None:
        """Send a provider's error answer to the client as it was sent (or ours, if none).

        Never a provider's rejection of the balancer's own key: to the client that is a failed
        provider (Claude Code would otherwise ask its user to log in again), not its auth error.
        """
        if failure.verdict.kind is FailureKind.AUTH:
            raise UpstreamError(
                f"provider {self.provider!r} rejected the balancer's credentials"
                f" ({failure.error.error_type}); the operator must fix its key"
            )
        if failure.answer is None:
            raise failure.error
        self.error = failure.error.error_type
        answer = failure.answer
        await self._commit(Head(answer.status, answer.headers), answer.body)

    async def _attempt(self, attempt: Attempt, runtime: ProviderRuntime) -> None:
        """One provider, with its own retries for connect errors; health updated either way."""
        health = runtime.health
        retries = 0
        while True:
            health.begin(trio.current_time())
            verdict_given = False
            try:
                await self._try(attempt, runtime)
                verdict_given = True
                if self.completed:
                    recovered = health.state is not State.HEALTHY
                    health.succeeded(trio.current_time())
                    if recovered:
                        self.observer.health_changed(runtime.name, health)
                else:
                    health.abandoned()
                self.tried.append(AttemptRecord(runtime.name, attempt.model, None, self.status))
                return
            except AttemptFailed as failure:
                verdict_given = True
                kind = failure.verdict.kind
                if kind is not None:
                    cooldown = health.failed(
                        trio.current_time(), kind, failure.error.message, failure.retry_after
                    )
                    self.observer.health_changed(runtime.name, health)
                    level = log.error if kind is FailureKind.AUTH else log.warning
                    level(
                        "provider.cooldown",
                        provider=runtime.name,
                        kind=kind.value,
                        seconds=round(cooldown, 2),
                        reason=failure.error.message,
                    )
                else:
                    health.abandoned()
                if failure.connect and retries < runtime.config.max_retries and not self.committed:
                    retries += 1
                    log.info(
                        "upstream.retry", provider=runtime.name, attempt=retries, reason=failure.error.message
                    )
                    await trio.sleep(_RETRY_BACKOFF_S * 2 ** (retries - 1))
                    continue
                raise
            finally:
                if not verdict_given:  # cancelled: the client left, no verdict on the provider
                    health.abandoned()
                    self.tried.append(
                        AttemptRecord(runtime.name, attempt.model, "cancelled: no listener left")
                    )

    async def _try(self, attempt: Attempt, runtime: ProviderRuntime) -> None:
        provider = runtime.config
        self.provider = provider.name
        self.upstream_model = attempt.model
        self.tracker = UsageTracker()  # what a failed attempt reported is not this response's
        self.usage_reported = None
        req = self.request
        if provider.kind == "openai" and req.path.endswith("/count_tokens"):
            # OpenAI-compatible servers have no such endpoint: answer with our own estimate.
            estimate = json.dumps({"input_tokens": estimate_request(req.payload)}).encode()
            await self._commit(Head(200, list(JSON_HEADERS)), estimate)
            self.completed = True
            return
        t = provider.timeouts
        name = provider.name
        total = trio.CancelScope(deadline=_deadline(t.total))
        phase = trio.CancelScope(deadline=_deadline(t.first_byte))
        started = trio.current_time()
        in_body = False
        log.info("upstream.connect", provider=name, model=attempt.model, kind=provider.kind)
        with total:
            with phase:
                try:
                    async with runtime.client.stream(
                        "POST",
                        upstream_url(provider, req.path, req.query),
                        headers=request_headers(req.headers, provider),
                        content=self._upstream_body(provider, attempt.model),
                    ) as response:
                        now = trio.current_time()
                        self.ttfb = now - started
                        runtime.latency.observe(self.ttfb)
                        phase.deadline = now + t.idle
                        in_body = True
                        await self._relay(runtime, response, phase, t.idle)
                except httpx.TimeoutException as exc:
                    raise AttemptFailed(
                        Verdict(True, FailureKind.TIMEOUT),
                        UpstreamTimeout(f"provider {name!r}: {_describe(exc)}"),
                    ) from None
                except httpx.ConnectError as exc:
                    raise AttemptFailed(
                        Verdict(True, FailureKind.CONNECT),
                        UpstreamUnavailable(f"provider {name!r}: {_describe(exc)}"),
                        connect=True,
                    ) from None
                except httpx.TransportError as exc:
                    raise AttemptFailed(
                        Verdict(True, FailureKind.SERVER if in_body else FailureKind.CONNECT),
                        UpstreamUnavailable(f"provider {name!r}: {_describe(exc)}"),
                    ) from None
            if phase.cancelled_caught:
                what = (
                    f"idle for {t.idle:g} s" if in_body else f"no response headers within {t.first_byte:g} s"
                )
                raise AttemptFailed(
                    Verdict(True, FailureKind.TIMEOUT), UpstreamTimeout(f"provider {name!r}: {what}")
                )
        if total.cancelled_caught:
            raise AttemptFailed(
                Verdict(True, FailureKind.TIMEOUT),
                UpstreamTimeout(f"provider {name!r}: response not complete within {t.total:g} s"),
            )

    def _upstream_body(self, provider: ProviderConfig, model: str) -> bytes:
        if provider.kind != "openai":
            return self.request.body_for(model)
        options = RequestOptions(
            max_tokens_field=provider.max_tokens_field, reasoning_effort=provider.reasoning_effort
        )
        converted = to_openai(self.request.payload, model=model, options=options)
        if converted.dropped:
            log.debug("convert.dropped_fields", provider=provider.name, fields=list(converted.dropped))
        return json.dumps(converted.body, ensure_ascii=False, separators=(",", ":")).encode()

    # -- relaying ----------------------------------------------------------------------------

    async def _relay(
        self, runtime: ProviderRuntime, response: httpx.Response, idle: trio.CancelScope, idle_s: float
    ) -> None:
        provider = runtime.config
        openai = provider.kind == "openai"
        text_headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in response.headers.raw]
        now, wall = trio.current_time(), time.time()
        readings = read_headers(text_headers, now, wall)
        if readings:
            runtime.limits.update(readings)
        encoding = response.headers.get("content-encoding", "identity").lower()
        decoded = encoding not in ("identity", "")
        headers = response_headers(response.headers.raw, decoded_body=decoded)
        status = response.status_code
        if status != 200:
            body = await _read_bounded(response, MAX_ERROR_BODY)
            verdict = classify_status(status, passthrough=provider.passthrough)
            if openai:
                error_type, body = openai_error_to_anthropic(status, body, provider.name)
                body = self._scrub_error_body(provider, body)
                headers = _openai_headers(headers, b"application/json")
            else:
                found = _error_type_of(body)
                error_type = found or error_type_for_status(status)
                if found is None:
                    # Not Anthropic's shape (an HTML page from a gateway...): what it says stays
                    # out of our message (it may name hosts, echo headers); its type and size do not.
                    kind = response.headers.get("content-type", "no content type").split(";")[0]
                    log.info(
                        "upstream.error_body",
                        provider=provider.name,
                        status=status,
                        excerpt=scrub(body[:300].decode("utf-8", "replace"), self._secrets(provider)),
                    )
                    text = f"provider {provider.name!r} answered HTTP {status} ({kind}, {len(body)} bytes)"
                    body = error_body(error_type, text)
                    headers = [(n, v) for n, v in headers if n != b"content-type"] + JSON_HEADERS
                else:
                    body = self._scrub_error_body(provider, body)
            raise AttemptFailed(
                verdict,
                ProviderError(
                    status, f"provider {provider.name!r}: HTTP {status} {error_type}", error_type=error_type
                ),
                answer=_Answer(status, headers, body),
                retry_after=retry_after_seconds(text_headers, wall) if verdict.kind else None,
            )
        self._sse = response.headers.get("content-type", "").startswith("text/event-stream")
        if openai:
            headers = _openai_headers(
                headers, b"text/event-stream; charset=utf-8" if self._sse else b"application/json"
            )
        head = Head(200, headers)
        # aclosing: a cancelled flight must close the generator (and the response) right here,
        # not when the garbage collector finds it. (httpx annotates these as AsyncIterator;
        # they are async generators.)
        body_iter = cast(
            AsyncGenerator[bytes, None], response.aiter_bytes() if decoded else response.aiter_raw()
        )
        async with aclosing(body_iter) as chunks:
            if not self._sse:
                await self._relay_json(provider, head, chunks, idle, idle_s)
            elif not openai:
                await self._relay_sse(provider, head, chunks, idle, idle_s, None)
            else:
                # A converted stream has no upstream pings to forward; we send our own during
                # long silences (reasoning models can think for minutes without a delta).
                converter = StreamConverter(model=self.request.model)
                failure: Exception | None = None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._ping_while_silent)
                    try:
                        await self._relay_sse(provider, head, chunks, idle, idle_s, converter)
                    except Exception as exc:  # re-raised below, not wrapped in a group
                        failure = exc
                    nursery.cancel_scope.cancel()
                if failure is not None:
                    raise failure
                self.usage_reported = converter.usage_reported

    async def _ping_while_silent(self) -> None:
        seen = -1
        while True:
            await trio.sleep(PING_INTERVAL_S)
            if self.committed and self.events == seen:
                await self._publish(PING)
            seen = self.events

    async def _relay_json(
        self,
        provider: ProviderConfig,
        head: Head,
        chunks: AsyncGenerator[bytes, None],
        idle: trio.CancelScope,
        idle_s: float,
    ) -> None:
        held = bytearray()
        async for chunk in chunks:
            idle.deadline = trio.current_time() + idle_s  # JSON bodies come in few chunks
            self.bytes += len(chunk)
            if self.bytes > self.max_response_bytes:
                raise AttemptFailed(
                    Verdict(True, FailureKind.SERVER),
                    UpstreamError(
                        f"provider {provider.name!r}: response larger than {self.max_response_bytes} bytes, cut off"
                    ),
                )
            if self.committed:
                await self._publish(chunk)
                continue
            held += chunk
            if len(held) > MAX_HELD_JSON and provider.kind != "openai":
                await self._commit(head, bytes(held))
        if not self.committed:
            body = bytes(held)
            if provider.kind == "openai":
                body = self._converted_json(provider, body)
            else:
                self._check_json_answer(provider, body)
            _observe_json(self.tracker, body)  # the usage it reports, cache tokens included
            await self._commit(head, body)
        self.completed = True

    def _check_json_answer(self, provider: ProviderConfig, body: bytes) -> None:
        """A 200 whose body is an Anthropic error is that error, with its real status."""
        error_type = _error_type_of(body)
        if error_type is None:
            return
        status = _STATUS_BY_ERROR_TYPE.get(error_type, 500)
        message = f"provider {provider.name!r}: {error_type} in a 200 answer"
        raise AttemptFailed(
            classify_error_type(error_type, passthrough=provider.passthrough),
            ProviderError(status, message, error_type=error_type),
            answer=_Answer(status, list(JSON_HEADERS), self._scrub_error_body(provider, body)),
        )

    def _converted_json(self, provider: ProviderConfig, body: bytes) -> bytes:
        """An OpenAI chat completion as an Anthropic message; an error object is that error."""
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise AttemptFailed(
                Verdict(True, FailureKind.SERVER),
                UpstreamError(f"provider {provider.name!r}: unusable answer: {_short(exc)}"),
            ) from None
        if isinstance(parsed, dict) and parsed.get("error") and not parsed.get("choices"):
            err = parsed["error"] if isinstance(parsed["error"], dict) else {"message": str(parsed["error"])}
            error_type = openai_error_type(err)
            status = _STATUS_BY_ERROR_TYPE.get(error_type, 500)
            _, answer = openai_error_to_anthropic(status, body, provider.name)
            raise AttemptFailed(
                classify_error_type(error_type, passthrough=provider.passthrough),
                ProviderError(
                    status, f"provider {provider.name!r}: {error_type} in a 200 answer", error_type=error_type
                ),
                answer=_Answer(status, list(JSON_HEADERS), self._scrub_error_body(provider, answer)),
            )
        try:
            message = to_anthropic_message(parsed, model=self.request.model)
        except ConversionError as exc:
            raise AttemptFailed(
                Verdict(True, FailureKind.SERVER),
                UpstreamError(f"provider {provider.name!r}: unusable answer: {_short(exc)}"),
            ) from None
        self.usage_reported = bool(message["usage"]["input_tokens"] or message["usage"]["output_tokens"])
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()

    async def _relay_sse(
        self,
        provider: ProviderConfig,
        head: Head,
        chunks: AsyncGenerator[bytes, None],
        idle: trio.CancelScope,
        idle_s: float,
        converter: StreamConverter | None,
    ) -> None:
        name = provider.name
        decoder = SSEDecoder(self.max_event_bytes)
        state = _StreamState()
        limit = self.max_response_bytes
        received_bytes = 0
        slid_at = trio.current_time()
        slide_every = min(_IDLE_SLIDE_S, idle_s / 4)
        try:
            observer = self.observer
            async for chunk in chunks:
                received = time.perf_counter()
                received_bytes += len(chunk)
                if received_bytes > limit:
                    raise AttemptFailed(
                        Verdict(True, FailureKind.SERVER),
                        UpstreamError(f"provider {name!r}: response larger than {limit} bytes, cut off"),
                    )
                now = trio.current_time()
                if now - slid_at > slide_every:
                    idle.deadline = now + idle_s
                    slid_at = now
                events = decoder.feed(chunk)
                if events and converter is not None:
                    events = self._convert(provider, converter, events)
                if events:
                    before = self.bytes
                    await self._take(provider, head, events, state, check=converter is None)
                    if self.bytes != before:  # published (not held before the commit point)
                        handed = time.perf_counter()
                        observer.forward(handed - received)
                        if self._trace:
                            log.debug(
                                "stream.chunk",
                                events=len(events),
                                bytes=self.bytes - before,
                                received=received,
                                handed=handed,
                                forward_us=round((handed - received) * 1e6, 1),
                            )
        except EventTooLarge as exc:
            raise AttemptFailed(
                Verdict(True, FailureKind.SERVER), UpstreamError(f"provider {name!r}: {exc}")
            ) from None
        tail = decoder.close()
        if converter is not None:
            events = self._convert(provider, converter, [tail] if tail else [], closing=True)
        elif tail is not None:
            # The provider ended without a blank line after its last event. Most SSE clients
            # drop such an event, so we end it for them: the one change we make to the bytes.
            end = b"\n" if tail.raw.endswith((b"\n", b"\r")) else b"\n\n"
            events = [attrs.evolve(tail, raw=tail.raw + end)]
        else:
            events = []
        if events:
            await self._take(provider, head, events, state, check=False)
        if not self.committed:
            raise AttemptFailed(
                Verdict(True, FailureKind.SERVER),
                UpstreamUnavailable(f"provider {name!r}: stream ended before any content"),
            )
        if state.upstream_error is not None:
            raise state.upstream_error
        if not state.saw_stop:
            raise AttemptFailed(
                Verdict(True, FailureKind.SERVER),
                UpstreamUnavailable(f"provider {name!r}: stream ended before message_stop"),
            )
        self.completed = True

    def _convert(
        self,
        provider: ProviderConfig,
        converter: StreamConverter,
        events: list[SSEEvent],
        *,
        closing: bool = False,
    ) -> list[SSEEvent]:
        try:
            out: list[SSEEvent] = []
            for event in events:
                out.extend(converter.feed(event))
            if closing:
                out.extend(converter.close())
            return out
        except UpstreamStreamError as exc:
            verdict = classify_error_type(exc.error_type, passthrough=provider.passthrough)
            status = _STATUS_BY_ERROR_TYPE.get(exc.error_type, 500)
            message = f"provider {provider.name!r}: {exc.error_type} in stream: {scrub(str(exc), self._secrets(provider))}"
            raise AttemptFailed(
                verdict,
                ProviderError(status, message, error_type=exc.error_type),
                answer=_Answer(status, list(JSON_HEADERS), error_body(exc.error_type, message)),
            ) from None
        except ConversionError as exc:
            raise AttemptFailed(
                Verdict(True, FailureKind.SERVER), UpstreamError(f"provider {provider.name!r}: {exc}")
            ) from None

    async def _take(
        self,
        provider: ProviderConfig,
        head: Head,
        events: list[SSEEvent],
        state: _StreamState,
        *,
        check: bool,
    ) -> None:
        """Hold events until the commit point, then publish them as they come."""
        observe = self.tracker.observe
        for event in events:
            observe(event)
        if not self.committed:
            commit_at = self._find_commit(provider, events, state.held)
            if commit_at is None:
                return
            events = events[commit_at:]
        for i, event in enumerate(events):
            kind = event.event
            if kind == "message_stop":
                state.saw_stop = True
            elif kind == "error":
                state.upstream_error = self._error_after_commit(provider, event)
                events = [
                    *events[:i],
                    self._relayable_error(provider, event, state.upstream_error),
                    *events[i + 1 :],
                ]
            elif check and event.data is not None:
                _check_shape(provider.name, event)
        self.events += len(events)
        out = events[0].raw if len(events) == 1 else b"".join(e.raw for e in events)
        if state.held:
            out = b"".join(state.held) + out
            state.held.clear()
        self.bytes += len(out)
        if self.committed:
            await self._publish(out)
        else:
            await self._commit(head, out)

    def _find_commit(self, provider: ProviderConfig, events: list[SSEEvent], held: list[bytes]) -> int | None:
        """Index of the first event at or after which the stream is committed; None: hold all."""
        for i, event in enumerate(events):
            kind = event.event
            if kind == "error" or (kind is None and _is_error_data(event.data)):
                raise self._error_before_commit(provider, event)
            if kind in ("content_block_delta", "message_delta", "message_stop") or (
                kind == "content_block_start" and _block_has_content(event)
            ):
                held.extend(e.raw for e in events[:i])
                self.events += i
                return i
            if event.data is not None:
                _check_shape(provider.name, event)
        held.extend(e.raw for e in events)
        self.events += len(events)
        return None

    def _error_before_commit(self, provider: ProviderConfig, event: SSEEvent) -> AttemptFailed:
        name = provider.name
        error_type, message = _parse_error_event(event)
        verdict = classify_error_type(error_type, passthrough=provider.passthrough)
        status = _STATUS_BY_ERROR_TYPE.get(error_type, 500)
        body = (
            self._scrub_error_body(provider, event.data)
            if event.data is not None and _is_anthropic_error(event.data)
            else error_body(error_type, scrub(message, self._secrets(provider)))
        )
        return AttemptFailed(
            verdict,
            ProviderError(
                status, f"provider {name!r}: {error_type} in stream: {message}", error_type=error_type
            ),
            answer=_Answer(status, list(JSON_HEADERS), body),
        )

    def _secrets(self, provider: ProviderConfig) -> list[str]:
        """Every credential this request sent upstream: what no relayed text may contain."""
        sent = [provider.api_key or "", *provider.headers.values()]
        if provider.passthrough:
            for name, value in self.request.headers:
                if name in (b"x-api-key", b"authorization"):
                    text = value.decode("latin-1")
                    sent += [text, text.removeprefix("Bearer ").removeprefix("bearer ")]
        return [s for s in sent if s]

    def _scrub_error_body(self, provider: ProviderConfig, body: bytes) -> bytes:
        """An Anthropic error body with its message scrubbed; the same bytes when nothing changed."""
        try:
            parsed = json.loads(body)
            message = parsed["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return body
        if not isinstance(message, str):
            return body
        clean = scrub(message, self._secrets(provider))
        if clean == message:
            return body
        parsed["error"]["message"] = clean
        return json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode()

    def _relayable_error(self, provider: ProviderConfig, event: SSEEvent, failure: AttemptFailed) -> SSEEvent:
        """A provider's error event as the client may see it: scrubbed, and never an auth error
        of the balancer's own key (that is a provider failure to the client)."""
        if failure.verdict.kind is FailureKind.AUTH:
            data = error_body(
                "api_error", f"provider {provider.name!r} rejected the balancer's credentials mid-stream"
            )
            return SSEEvent(raw=encode_event("error", data.decode()), event="error", data=data)
        if event.data is None:
            return event
        clean = self._scrub_error_body(provider, event.data)
        if clean is event.data:
            return event
        return SSEEvent(raw=encode_event("error", clean.decode()), event="error", data=clean)

    def _error_after_commit(self, provider: ProviderConfig, event: SSEEvent) -> AttemptFailed:
        """The provider's own error event reached the client; remember it for health."""
        name = provider.name
        error_type, message = _parse_error_event(event)
        return AttemptFailed(
            classify_error_type(error_type, passthrough=provider.passthrough),
            ProviderError(
                _STATUS_BY_ERROR_TYPE.get(error_type, 500),
                f"provider {name!r}: {error_type} in stream: {message}",
                error_type=error_type,
            ),
            sent_to_client=True,
        )


@attrs.define
class _StreamState:
    held: list[bytes] = attrs.Factory(list)  # raw events before the commit point
    saw_stop: bool = False
    upstream_error: AttemptFailed | None = None


_STATUS_BY_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _parse_error_event(event: SSEEvent) -> tuple[str, str]:
    try:
        data = event.json()
        err = data.get("error", {}) if isinstance(data, dict) else {}
        return str(err.get("type") or "api_error"), str(err.get("message") or "")
    except MalformedEventData:
        return "api_error", "malformed error event"


def _block_has_content(event: SSEEvent) -> bool:
    """A content_block_start that already carries something for the client (not an empty text)."""
    try:
        block = event.json().get("content_block") or {}
    except (MalformedEventData, AttributeError):
        return True  # odd, but it is content from this provider's point of view
    kind = block.get("type")
    if kind in ("text", "thinking"):
        return bool(block.get(kind))
    return True


def _openai_headers(upstream: list[tuple[bytes, bytes]], content_type: bytes) -> list[tuple[bytes, bytes]]:
    """What an Anthropic client should see of an OpenAI server's headers: the request id."""
    out = [(b"content-type", content_type)]
    out.extend((b"request-id", v) for n, v in upstream if n == b"x-request-id")
    return out


def _short(exc: BaseException) -> str:
    return str(exc)[:200]


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)


def _deadline(seconds: float | None) -> float:
    return math.inf if seconds is None else trio.current_time() + seconds


def _describe(exc: httpx.HTTPError) -> str:
    # The class name says what failed; httpx messages can carry URLs, so they stay out.
    return {
        "ConnectError": "connection failed",
        "ConnectTimeout": "connect timeout",
        "PoolTimeout": "no free connection in the pool",
        "ReadTimeout": "read timeout",
        "WriteTimeout": "write timeout",
        "RemoteProtocolError": "connection closed or protocol error",
        "ReadError": "connection broken while reading",
        "WriteError": "connection broken while writing",
    }.get(type(exc).__name__, type(exc).__name__)


def _is_error_data(data: bytes | None) -> bool:
    """An event without an ``event:`` line whose data is an Anthropic error object."""
    return (
        data is not None
        and data.lstrip()[:1] == b"{"
        and b'"error"' in data
        and _error_type_of(data) is not None
    )


def _is_anthropic_error(body: bytes) -> bool:
    return _error_type_of(body) is not None


def _error_type_of(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict) and parsed.get("type") == "error" and isinstance(parsed.get("error"), dict):
        t = parsed["error"].get("type")
        return t if isinstance(t, str) else "api_error"
    return None


def _observe_json(tracker: UsageTracker, body: bytes) -> None:
    try:
        message = json.loads(body)
    except ValueError:
        return
    if isinstance(message, dict):
        tracker.observe_message(message)


def _check_shape(name: str, event: SSEEvent) -> None:
    """Cheap structural check of every data payload: JSON objects start and end with braces.

    A full parse of every event would cost more than the rest of the relay; this catches
    truncated and non-JSON payloads, which are what broken upstreams actually send. Events we
    parse anyway (errors, the commit point, usage) get the full check where they are parsed.
    """
    data = event.data
    if data and data[0] == 0x7B and (data[-1] == 0x7D or data.rstrip()[-1:] == b"}"):
        return  # (the rstrip copy only for the rare payload with trailing whitespace)
    try:
        event.json()
    except MalformedEventData as exc:
        log.warning("upstream.malformed_event", provider=name, problem=str(exc))
