"""One request's upstream lifetime: try targets until one commits, then stream it to listeners.

A flight runs in the app's nursery, not in the handler of the request that started it, so a
stream can outlive the client that asked for it while others still listen (:mod:`.hub`). The
flight's one task walks the routing plan: each attempt is one HTTP call (:mod:`.attempt`)
whose 200 response is relayed (:mod:`.relay`) through the commit gate. Until the commit point
any failure moves to the next target, invisibly; after it, a failure becomes an SSE ``event:
error`` (or a dropped connection for a cut JSON body) and the end of the response. Health is
updated after every attempt. The last listener leaving cancels the flight, which closes the
upstream response and releases its connection at once.

:meth:`Flight.run` returns a frozen :class:`~.outcome.FlightOutcome`; that is what the app
records. While it runs, :meth:`Flight.view` is what the status page shows of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from trio_balancer.errors import (
    JSON_HEADERS,
    BalancerError,
    InternalError,
    Overloaded,
    UpstreamError,
)
from trio_balancer.flight.attempt import UpstreamResponse, call_provider
from trio_balancer.flight.failures import AttemptFailed, unavailable
from trio_balancer.flight.hub import Abort, Head, Hub, Item, Listener, SharePolicy
from trio_balancer.flight.outcome import AttemptRecord, FlightOutcome, FlightView
from trio_balancer.flight.relay import Relay, RelayLimits
from trio_balancer.logging import debug_enabled, get_logger
from trio_balancer.policy.failover import Verdict
from trio_balancer.policy.health import FailureKind, ProviderHealth, State
from trio_balancer.policy.plan import larger_windows
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol import events
from trio_balancer.protocol.thinking import SignatureBook
from trio_balancer.protocol.usage import Usage
from trio_balancer.upstream.credentials import CredentialsUnavailable
from trio_balancer.upstream.families import Outbound
from trio_balancer.upstream.providers import ProviderRuntime
from trio_balancer.upstream.request import UpstreamRequest, secrets_sent

__all__ = ["Flight", "FlightObserver", "UpstreamRequest"]

log = get_logger("trio_balancer.flight.flight")

_ONE_LISTENER = SharePolicy()
_DEFAULT_LIMITS = RelayLimits()
# Backoff before retrying the same provider after a connect error (doubles each time).
_RETRY_BACKOFF_S = 0.2


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


class Flight:
    """One request's upstream lifetime: the plan's attempts in turn, listeners fed through a hub.

    Mutable while it runs (the progress below); :meth:`run` returns the frozen outcome.
    """

    judges_health = True  # whether its attempts' outcomes count for the providers' health

    def __init__(
        self,
        request: UpstreamRequest,
        attempts: list[Attempt],
        providers: Mapping[str, ProviderRuntime],
        share: SharePolicy = _ONE_LISTENER,
        observer: FlightObserver | None = None,
        *,
        limits: RelayLimits = _DEFAULT_LIMITS,
        skipped: Sequence[AttemptRecord] = (),
        thinking: SignatureBook | None = None,
        show_upstream_model: bool = False,
    ) -> None:
        self.request = request
        self.attempts = attempts
        self._providers = providers
        self._limits, self._show_upstream_model = limits, show_upstream_model
        self._thinking = thinking  # which family signed each thinking block (the app's book)
        self.observer: FlightObserver = observer or _Unobserved()
        self._trace = debug_enabled()  # per-event debug lines, decided once per flight
        self.cancel_scope = trio.CancelScope()
        self.hub = Hub(share, deserted=self.cancel_scope.cancel)
        self.outcome: FlightOutcome | None = None  # once run has ended, however it ended
        # Progress while running; the outcome is made of it at the end.
        self._tried: list[AttemptRecord] = list(skipped)  # the plan's providers that could not take it
        self._provider: str | None = None
        self._model: str | None = None
        self._status: int | None = None
        self._committed = False
        self._completed = False
        self._sse = False
        self._error: str | None = None
        self._ttfb: float | None = None
        self._relay: Relay | None = None

    # -- listeners (the hub's) ---------------------------------------------------------------

    def subscribe(self) -> Listener:
        return self.hub.subscribe()

    def unsubscribe(self, listener: Listener) -> None:
        self.hub.unsubscribe(listener)

    def was_dropped(self, listener: Listener) -> bool:
        return self.hub.was_dropped(listener)

    @property
    def joinable(self) -> bool:
        return self.hub.joinable

    @property
    def history(self) -> list[Item]:
        return self.hub.history

    # -- what it is doing --------------------------------------------------------------------

    @property
    def provider(self) -> str | None:
        """The provider serving (or being tried) right now."""
        return self._provider

    @property
    def upstream_model(self) -> str | None:
        return self._model

    @property
    def tried(self) -> list[AttemptRecord]:
        """The attempts made so far."""
        return list(self._tried)

    @property
    def completed(self) -> bool:
        return self._completed

    def view(self) -> FlightView:
        relay = self._relay
        return FlightView(
            model=self.request.model,
            provider=self._provider,
            listeners=self.hub.listeners,
            events=relay.events if relay else 0,
            bytes=relay.bytes if relay else 0,
            committed=self._committed,
        )

    # -- the outlet the relay publishes to ----------------------------------------------------

    @property
    def committed(self) -> bool:
        return self._committed

    async def commit(self, head: Head, first: bytes | None, *, held_events: int = 0) -> None:
        self._committed = True
        self._status = head.status
        log.info("stream.commit", provider=self._provider, status=head.status, events_held=held_events)
        await self.hub.publish(head)
        if first:
            await self.hub.publish(first)

    async def publish(self, item: Item) -> None:
        await self.hub.publish(item)

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self) -> FlightOutcome:
        """Serve the request; whatever happens, listeners get an answer and this its outcome."""
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
                    log.exception("flight.crash", provider=self._provider)
                    await self._fail(InternalError("internal error in the balancer"))
        finally:
            for runtime in held:
                runtime.release()
            self.hub.close()
            self.outcome = self._conclude()
        return self.outcome

    def _conclude(self) -> FlightOutcome:
        """The outcome of what happened; never raises (it runs in ``run``'s finally)."""
        usage: Usage | None = None
        usage_unknown = False
        try:
            usage = self._usage()
        except Exception:  # a bug in accounting: the record is flagged, the app goes on
            log.exception("flight.usage_failed", provider=self._provider)
            usage_unknown = True
        relay = self._relay
        return FlightOutcome(
            provider=self._provider,
            upstream_model=self._model,
            status=self._status,
            committed=self._committed,
            completed=self._completed,
            sse=self._sse,
            events=relay.events if relay else 0,
            bytes=relay.bytes if relay else 0,
            error=self._error,
            ttfb=self._ttfb,
            usage=usage,
            usage_unknown=usage_unknown,
            tried=tuple(self._tried),
            replay=tuple(self.hub.history),
        )

    def _usage(self) -> Usage | None:
        """What this response used; None when no provider produced one (errors, refusals)."""
        if not self._committed or self._status != 200 or self._relay is None:
            return None
        relay = self._relay
        return relay.tracker.result(self.request.payload, trust_output=relay.usage_reported is not False)

    async def _fail(self, exc: BalancerError) -> None:
        self._error = exc.error_type
        if not self._committed:
            headers = JSON_HEADERS + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            await self.commit(Head(exc.status, headers), exc.body())
        elif self._sse:
            await self.hub.publish(events.error_event(exc.error_type, exc.message))
        else:
            await self.hub.publish(Abort(exc.message))

    async def _serve(self) -> None:
        """The failover loop: each target in the plan until one serves or a verdict is final."""
        failures: list[AttemptFailed] = []
        queue = list(self.attempts)
        while queue:
            attempt = queue.pop(0)
            runtime = self._providers[attempt.provider.name]
            try:
                await self._attempt(attempt, runtime)
                return
            except AttemptFailed as failure:
                status = failure.answer.status if failure.answer else None
                self._tried.append(AttemptRecord(runtime.name, attempt.model, failure.error.message, status))
                if self._committed:
                    self._error = failure.error.error_type
                    if not failure.sent_to_client:
                        await self._fail(failure.error)
                    return
                queue, final = _after_failure(queue, attempt, failure)
                if final:
                    await self._relay_answer(failure)
                    return
                failures.append(failure)
                self.observer.failover(runtime.name, _failover_reason(failure.verdict))
                _log_failover(runtime.name, failure, queue)
        answer = _answer_to_relay(failures, self._tried)
        if answer is None:
            raise _all_failed(self._tried, self._providers)
        await self._relay_answer(answer)

    async def _relay_answer(self, failure: AttemptFailed) -> None:
        """Send a provider's error answer to the client as it was sent (or ours, if none).

        Never a provider's rejection of the balancer's own key: to the client that is a failed
        provider (Claude Code would otherwise ask its user to log in again), not its auth error.
        """
        if failure.verdict.kind is FailureKind.AUTH:
            raise UpstreamError(
                f"provider {self._provider!r} rejected the balancer's credentials"
                f" ({failure.error.error_type}); the operator must fix its key"
            )
        if failure.answer is None:
            raise failure.error
        self._error, answer = failure.error.error_type, failure.answer
        await self.commit(Head(answer.status, answer.headers), answer.body)

    async def _attempt(self, attempt: Attempt, runtime: ProviderRuntime) -> None:
        """One provider, with its own retries for connect errors; health updated either way."""
        health, judged = runtime.health, self.judges_health
        retries = 0
        while True:
            if judged:
                health.begin(trio.current_time())
            verdict_given = False
            try:
                await self._try(attempt, runtime)
                verdict_given = True
                if judged:
                    _succeeded(runtime, self._completed, self.observer)
                self._tried.append(AttemptRecord(runtime.name, attempt.model, None, self._status))
                return
            except AttemptFailed as failure:
                verdict_given = True
                if judged:
                    _failed(runtime, failure, self.observer)
                if failure.connect and retries < runtime.config.max_retries and not self._committed:
                    retries += 1
                    reason = failure.error.message
                    log.info("upstream.retry", provider=runtime.name, attempt=retries, reason=reason)
                    await trio.sleep(_RETRY_BACKOFF_S * 2 ** (retries - 1))
                    continue
                raise
            finally:
                if not verdict_given:  # cancelled: the client left, no verdict on the provider
                    if judged:  # (a count never began a trial, so frees none)
                        health.abandoned()
                    self._tried.append(
                        AttemptRecord(runtime.name, attempt.model, "cancelled: no listener left")
                    )

    async def _try(self, attempt: Attempt, runtime: ProviderRuntime) -> None:
        provider = runtime.config
        self._provider = provider.name
        self._model = attempt.model
        self._relay = None  # what a failed attempt relayed is not this response's
        req = self.request
        outbound = await _outbound(runtime, req, attempt.model, self._thinking)
        secrets = [*secrets_sent(provider, req), *outbound.secrets]
        relay = Relay(
            provider,
            req.payload,
            self,
            secrets,
            limits=self._limits,
            forward=self.observer.forward,
            trace=self._trace,
            thinking=self._thinking,
            **_relay_names(outbound.model, req, show_upstream=self._show_upstream_model),
        )
        self._relay = relay

        async def relay_response(response: UpstreamResponse) -> None:
            self._sse = response.sse
            await relay.run(response)
            self._completed = relay.completed

        if outbound.changes:
            log.debug("upstream.fit", provider=provider.name, changes=outbound.changes)
        log.info("upstream.connect", provider=provider.name, model=attempt.model, kind=provider.kind)
        await call_provider(
            runtime,
            outbound.url,
            outbound.headers,
            outbound.body,
            secrets,
            relay_response,
            on_headers=self._headers_came,
        )

    def _headers_came(self, ttfb: float) -> None:
        self._ttfb = ttfb


async def _outbound(
    runtime: ProviderRuntime, request: UpstreamRequest, model: str, thinking: SignatureBook | None
) -> Outbound:
    try:
        return await runtime.family.outbound(request, model, thinking=thinking)
    except CredentialsUnavailable as exc:  # the operator's to fix: this provider fails over
        raise unavailable(runtime.name, str(exc).split(": ", 1)[-1], kind=FailureKind.AUTH) from None


def _relay_names(upstream: str, request: UpstreamRequest, *, show_upstream: bool) -> dict[str, Any]:
    """What the relay is told of the answer: the model a renamed passthrough answer is
    renamed to (None: left as the provider sent it), the one a converted answer is written
    with, and whether it is a count (passed on as it is)."""
    client = request.model
    renamed = None if show_upstream or upstream == client else client
    converted = upstream if show_upstream else client
    return {"client_model": renamed, "converted_model": converted, "counting": request.counts_tokens}


def _after_failure(
    queue: list[Attempt], attempt: Attempt, failure: AttemptFailed
) -> tuple[list[Attempt], bool]:
    """What is left to try after ``attempt`` failed, and whether its answer is final instead.

    A prompt too long for it leaves only targets with a larger (or unknown) window; with none
    left, or a failure no other provider would change, the provider's answer goes to the client.
    """
    if failure.verdict.too_long:
        queue = larger_windows(queue, attempt)
        return queue, not queue
    return queue, not failure.verdict.retry


def _answer_to_relay(failures: list[AttemptFailed], tried: list[AttemptRecord]) -> AttemptFailed | None:
    """After every target failed: the provider answer that says it best, or None (the client is
    told every provider failed, and retries).

    With one provider tried, its own answer. When every failure was the request's trouble that
    no target could fix (a prompt too long for every window, a model no target has), the
    too-long answer if there is one (Claude Code compacts on it; it would retry a 529 with the
    same prompt), else the last.
    """
    assert failures
    if sum(not r.skipped for r in tried) == 1:
        return failures[-1]
    if all(f.verdict.not_here or f.verdict.too_long for f in failures):
        return next((f for f in failures if f.verdict.too_long), failures[-1])
    return None


def _log_failover(provider: str, failure: AttemptFailed, queue: list[Attempt]) -> None:
    if queue:
        log.warning("failover", provider=provider, reason=failure.error.message, next=queue[0].provider.name)


def _failover_reason(verdict: Verdict) -> str:
    """The failover metric's reason label."""
    if verdict.too_long:
        return "prompt_too_long"
    if verdict.not_here:
        return "model_not_here"
    return verdict.kind.value if verdict.kind else "client"


def _succeeded(runtime: ProviderRuntime, completed: bool, observer: FlightObserver) -> None:
    """Health after an attempt that raised nothing: a success if the response completed."""
    health = runtime.health
    if not completed:
        health.abandoned()
        return
    recovered = health.state is not State.HEALTHY
    health.succeeded(trio.current_time())
    if recovered:
        observer.health_changed(runtime.name, health)


def _failed(runtime: ProviderRuntime, failure: AttemptFailed, observer: FlightObserver) -> None:
    """Health after a failed attempt: a cooldown if the verdict blames the provider."""
    health = runtime.health
    kind = failure.verdict.kind
    if kind is None:
        health.abandoned()
        return
    reason = failure.error.message
    cooldown = health.failed(trio.current_time(), kind, reason, failure.retry_after)
    observer.health_changed(runtime.name, health)
    level = log.error if kind is FailureKind.AUTH else log.warning
    level(
        "provider.cooldown", provider=runtime.name, kind=kind.value, seconds=round(cooldown, 2), reason=reason
    )


def _all_failed(tried: list[AttemptRecord], providers: Mapping[str, ProviderRuntime]) -> Overloaded:
    now = trio.current_time()
    summary = "; ".join(f"{r.provider}: {r.error}" for r in tried)
    waits = [
        providers[r.provider].health.cooling_until - now
        for r in tried
        if not r.skipped and providers[r.provider].health.cooling_until > now
    ]
    headers = {"retry-after": str(max(1, math.ceil(min(waits))))} if waits else {}
    return Overloaded(f"every provider for this model failed ({summary})", headers=headers)
