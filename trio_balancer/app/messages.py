"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: from a request to its answer.

Every check that can refuse a request (limits, the body, the model, permissions) runs before
any upstream call. Then one of three answers: a cached response, a place on an identical
request's live flight (a follower), or a new flight (a leader). Whatever happens, the
handler's ``finally`` is reached and the request is recorded (:class:`RecordSink`).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import structlog
import trio

from trio_balancer.app.accounting import RecordSink
from trio_balancer.app.cluster import LimitRefused
from trio_balancer.app.flight_reports import FlightReports
from trio_balancer.app.records import RequestContext, client_identity, new_request_id
from trio_balancer.app.respond import Receive, Scope, Send
from trio_balancer.app.state import AppState
from trio_balancer.app.supervisor import FlightSupervisor
from trio_balancer.app.writer import Delivery, ResponseWriter, replay
from trio_balancer.config import Route
from trio_balancer.errors import (
    BalancerError,
    ClientGone,
    InternalError,
    NotServing,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
)
from trio_balancer.flight.counting import CountFlight
from trio_balancer.flight.flight import Flight
from trio_balancer.flight.hub import Head, SharePolicy
from trio_balancer.flight.outcome import AttemptRecord, FlightOutcome
from trio_balancer.flight.relay import RelayLimits
from trio_balancer.logging import get_logger
from trio_balancer.policy.auth import ClientKey, header
from trio_balancer.policy.plan import fit_plan, fit_windows, must_estimate, resolve_windows
from trio_balancer.policy.routing import Attempt, Decision
from trio_balancer.protocol.dedup import CachedResponse, signature
from trio_balancer.protocol.features import needs_of
from trio_balancer.protocol.request_facts import facts_of
from trio_balancer.protocol.thinking import signatures_in
from trio_balancer.protocol.validation import parse_request_body, validate_messages_request
from trio_balancer.protocol.windows import asks_long_context, window_need, window_need_bound
from trio_balancer.upstream.request import COUNT_TOKENS_PATH, MESSAGES_PATH, UpstreamRequest

__all__ = ["MessagesEndpoint"]

# Bodies above this are estimated in a worker thread (about 0.15 ms of CPU per KB: 16 ms for a
# real 117 KB Claude Code turn): a 1 MB prompt would otherwise hold every other stream of this
# instance for 150 ms. The handoff costs about 0.1 ms.
ESTIMATE_INLINE_BYTES = 64 * 1024

log = get_logger("trio_balancer.app.messages")

_Headers = list[tuple[bytes, bytes]]


class MessagesEndpoint:
    """Answers ``/v1/messages*`` requests; one per app, stateless between requests."""

    def __init__(
        self, state: AppState, supervisor: FlightSupervisor, sink: RecordSink, observer: FlightReports
    ) -> None:
        self._state = state
        self._supervisor = supervisor
        self._sink = sink
        self._observer = observer  # the FlightObserver every flight reports to

    async def handle(self, scope: Scope, receive: Receive, send: Send, key: ClientKey | None) -> None:
        """One request, from its arrival to its record.

        Whatever happens inside (a bad body, a bug of ours, a cancellation at shutdown), the
        ``finally`` is reached, and it is where the request is accounted for.
        """
        state = self._state
        client = key.name if key is not None else client_identity(scope["headers"])
        ctx = RequestContext(new_request_id(), client, scope["path"])
        structlog.contextvars.bind_contextvars(request_id=ctx.id)  # every line of this request, flight too
        writer = ResponseWriter(receive, send, [(b"x-balancer-request-id", ctx.id.encode())])
        delivery: Delivery | None = None
        lease: str | None = None
        admitted = False
        self._supervisor.handler_started()
        try:
            if ctx.path != COUNT_TOKENS_PATH:  # counting costs nothing: never refused for spend
                state.budgets.admit(key)
            lease = await self._acquire(client, key)
            admitted = True
            state.metrics.active_listeners.inc()
            delivery = await self._answer(ctx, writer, scope, receive, key)
        except BalancerError as exc:
            delivery = await self._refuse(ctx, writer, exc)
        except Exception:  # a bug of ours: this client gets an error, everyone else goes on
            log.exception("request.crash", path=ctx.path)
            delivery = await self._refuse(ctx, writer, InternalError("internal error in the balancer"))
        finally:
            ctx.delivery = delivery if delivery is not None else writer.interrupted()
            with trio.CancelScope(shield=True):
                try:
                    if admitted:
                        state.metrics.active_listeners.dec()
                        state.limiter.release(client)
                        if lease is not None and state.cluster is not None:
                            await state.cluster.release(client, lease)
                finally:  # the record is made whatever releasing the limits did
                    ctx.handler_done = True
                    try:
                        await self._sink.finish(ctx)
                    finally:
                        self._supervisor.handler_recorded()

    async def _refuse(self, ctx: RequestContext, writer: ResponseWriter, exc: BalancerError) -> Delivery:
        """Answer the balancer's own error; a leader's flight has the error of its own record."""
        if not ctx.flight_started and not isinstance(exc, ClientGone):
            ctx.error = exc
        return await writer.error(exc)

    async def _acquire(self, client: str, key: ClientKey | None) -> str | None:
        """Take this request's place in the limits: across instances (Redis) when clustered.

        Returns the cluster lease to release, if any. With Redis unreachable the per-client
        limits fall back to this instance's own counts, so requests keep flowing.
        """
        cluster, limiter = self._state.cluster, self._state.limiter
        max_concurrent = key.max_concurrent if key else None
        per_minute = key.requests_per_minute if key else None
        shared = cluster is not None and bool(max_concurrent or per_minute) and not cluster.degraded
        lease = None
        if shared:
            assert cluster is not None
            try:
                lease = await cluster.acquire(client, max_concurrent=max_concurrent, per_minute=per_minute)
            except LimitRefused as exc:
                raise _refused(client, exc, max_concurrent, per_minute) from None
            except Exception:  # Redis went away mid-call: this instance's own counts
                shared = False
        limiter.acquire(
            client,
            trio.current_time(),
            max_concurrent=None if shared else max_concurrent,
            per_minute=None if shared else per_minute,
        )
        return lease

    async def _answer(
        self,
        ctx: RequestContext,
        writer: ResponseWriter,
        scope: Scope,
        receive: Receive,
        key: ClientKey | None,
    ) -> Delivery:
        """Read and check the request, then answer it: from the cache, another flight, or a new one."""
        request = await self._read_request(ctx, scope, receive, key)
        ctx.bounded = key is not None and (key.max_concurrent is not None or key.has_budget)
        if not self._supervisor.serving or self._state.registry is None:
            raise NotServing("the balancer is not serving requests (starting, stopping or failed)")
        decision = self._route(ctx, writer, request)
        dedup_key = self._dedup_key(scope, request, ctx)
        if dedup_key is not None:
            cached = await self._cached(dedup_key, request)
            if cached is not None:
                ctx.dedup_role = "cache"
                ctx.shared_from = (cached.provider, cached.upstream_model)
                writer.extra.append((b"x-balancer-dedup", b"cache"))
                return await writer.drain(replay(cached), request.stream)
            leader = self._supervisor.joinable(dedup_key)
            if leader is not None:
                return await self._follow(ctx, writer, leader, request)
            ctx.dedup_role = "leader"
        return await self._lead(ctx, writer, request, dedup_key, decision.route)

    def _route(self, ctx: RequestContext, writer: ResponseWriter, request: UpstreamRequest) -> Decision:
        """Which route takes the request, said in its response header, its record and the log."""
        facts = facts_of(request.payload, request.headers, client=ctx.client, body_bytes=len(request.body))
        decision = self._state.router.decide(facts)
        ctx.route, ctx.route_why = decision.label, decision.why
        writer.extra.append((b"x-balancer-route", decision.label.encode("ascii")))
        for label, why in decision.passed_over:
            log.debug("route.passed_over", route=label, why=why)
        log.info("route.chosen", route=decision.label, why=decision.why)
        return decision

    async def _read_request(
        self, ctx: RequestContext, scope: Scope, receive: Receive, key: ClientKey | None
    ) -> UpstreamRequest:
        server = self._state.config.server
        _require_json(scope["headers"])
        with trio.move_on_after(server.body_timeout_s) as body_scope:
            body = await _read_body(scope, receive, server.max_body_bytes)
        if body_scope.cancelled_caught:
            raise RequestTimeout(f"request body not complete within {server.body_timeout_s:g} s")
        request = _parse_request(scope, body, ctx.client)
        ctx.model, ctx.stream = request.model, request.stream
        if key is not None and key.models and not any(fnmatchcase(request.model, g) for g in key.models):
            raise PermissionDenied(f"client {key.name!r} may not use model {request.model!r}")
        log.info(
            "request.start",
            path=ctx.path,
            model=ctx.model,
            stream=ctx.stream,
            client=ctx.client,
            bytes=len(body),
        )
        return request

    async def _cached(self, dedup_key: str, request: UpstreamRequest) -> CachedResponse | None:
        if request.counts_tokens:  # counts are cheap to redo: this instance's own cache only
            return self._state.count_cache.get(dedup_key, trio.current_time())
        cached = self._state.cache.get(dedup_key, trio.current_time())
        cluster = self._state.cluster
        if cached is None and cluster is not None and not cluster.degraded:
            cached = await cluster.cache_get(dedup_key)  # another instance may have answered it
        return cached

    async def _follow(
        self, ctx: RequestContext, writer: ResponseWriter, leader: Flight, request: UpstreamRequest
    ) -> Delivery:
        """Listen to an identical request's flight; the upstream is billed to its leader."""
        ctx.dedup_role = "follower"
        writer.extra.append((b"x-balancer-dedup", b"follower"))
        listener = leader.subscribe()
        try:
            return await writer.drain(listener, request.stream, leader.was_dropped)
        finally:
            leader.unsubscribe(listener)
            ctx.shared_from = (leader.provider, leader.upstream_model)

    async def _lead(
        self,
        ctx: RequestContext,
        writer: ResponseWriter,
        request: UpstreamRequest,
        dedup_key: str | None,
        route: Route,
    ) -> Delivery:
        """A new flight for this request, shared with identical ones if ``dedup_key`` is set."""
        state = self._state
        assert state.registry is not None
        providers = state.registry.runtimes
        attempts = state.router.plan(
            request.model,
            providers,
            now=trio.current_time(),
            session=request.session,
            # A rough input size (4 bytes a token) is enough to steer around a nearly empty bucket.
            need_tokens=len(request.body) // 4,
            route=route,
        )
        counting = request.counts_tokens  # counting a request is not running it: nothing it needs
        attempts, skipped = fit_plan(attempts, () if counting else request.needs)
        if not counting:
            attempts, too_small = await _fit_windows(request, attempts)
            skipped += too_small
        if state.cluster is not None:  # whose thinking this is may be known on another instance
            await state.cluster.recall_thinking(signatures_in(request.payload))
        for attempt, why in skipped:
            log.info("route.skip", provider=attempt.provider.name, reason=why)
        share = SharePolicy.for_dedup(
            state.config.dedup, shared=dedup_key is not None, orphans=not ctx.bounded
        )
        limits = RelayLimits.for_server(state.config.server)
        flight = (CountFlight if counting else Flight)(
            request,
            attempts,
            providers,
            share,
            observer=self._observer,
            limits=limits,
            skipped=[
                AttemptRecord(a.provider.name, a.model, f"skipped: {why}", skipped=True) for a, why in skipped
            ],
            thinking=state.thinking,
            show_upstream_model=state.config.routing.show_upstream_model,
        )
        listener = flight.subscribe()
        self._supervisor.start(flight, ctx, dedup_key)
        writer.extra.append((b"x-balancer-dedup", ctx.dedup_role.encode()))
        try:
            return await writer.drain(listener, request.stream, flight.was_dropped)
        finally:
            flight.unsubscribe(listener)

    def _dedup_key(self, scope: Scope, request: UpstreamRequest, ctx: RequestContext) -> str | None:
        """The signature identical requests share a flight and a cached answer by; None: never.

        Token counts are shared too (Claude Code's bursts of the same count), in a cache of
        their own with a short life (``AppState.count_cache``). The route taken is signed with
        the client: two requests alike but for what a ``when`` condition reads (a header, a
        subagent's id) may go to different providers, and must not share an answer.
        """
        dedup = self._state.config.dedup
        if not dedup.enabled or request.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            return None
        for name, value in scope["headers"]:
            if name == b"x-balancer-no-dedup" and value.strip() not in (b"", b"0", b"false"):
                return None
        return signature(
            request.payload,
            path=request.path,
            query=request.query,
            headers=scope["headers"],
            identity=f"{ctx.client}\x00route:{ctx.route}",
            include_max_tokens=dedup.include_max_tokens,
        )

    def flight_ended(self, request: UpstreamRequest, outcome: FlightOutcome, key: str | None) -> None:
        """A flight is over: cache what may be reused, and remember the session's provider
        (a count is no turn of the conversation: where it went moves nothing)."""
        if key is not None:
            self._maybe_cache(key, outcome, request)
        session = request.session
        if (
            session is not None
            and outcome.completed
            and outcome.provider is not None
            and not request.counts_tokens
        ):
            self._state.router.remember(session, outcome.provider, trio.current_time())

    def _maybe_cache(self, key: str, outcome: FlightOutcome, request: UpstreamRequest) -> None:
        """Keep a complete, successful response for identical requests; never errors or cuts."""
        replay = outcome.replay
        if not (outcome.completed and outcome.status == 200 and replay and isinstance(replay[0], Head)):
            return
        state = self._state
        head = replay[0]
        chunks = [item for item in replay[1:] if type(item) is bytes]
        counting = request.counts_tokens
        (state.count_cache if counting else state.cache).put(
            key,
            trio.current_time(),
            status=head.status,
            headers=head.headers,
            chunks=chunks,
            sse=outcome.sse,
            provider=outcome.provider,
            upstream_model=outcome.upstream_model,
        )
        ttl = state.config.dedup.cache_ttl_s
        if state.cluster is not None and ttl > 0 and not counting:
            body = b"".join(chunks)
            entry = CachedResponse(
                status=head.status,
                headers=head.headers,
                chunks=(body,),
                sse=outcome.sse,
                size=len(body),
                expires=0.0,  # the cluster sets its own expiry (ttl)
                provider=outcome.provider,
                upstream_model=outcome.upstream_model,
            )
            state.cluster.cache_put(key, entry, ttl)


def _refused(
    client: str, exc: LimitRefused, max_concurrent: int | None, per_minute: int | None
) -> RateLimited:
    """The cluster's refusal in words: which of the key's limits it is at."""
    what = (
        f"{max_concurrent} concurrent requests"
        if exc.reason == "concurrency"
        else f"{per_minute} requests per minute"
    )
    return RateLimited(
        f"client {client!r} is at its limit of {what}", headers={"retry-after": str(exc.retry_after)}
    )


def _require_json(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """The body must be declared JSON: what every API client sends, and what a web page's
    "simple" cross-site request (text/plain, a form) cannot."""
    content_type = header(headers, b"content-type") or b""
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise UnsupportedMediaType("content-type: must be application/json")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected while sending its request")
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


def _parse_request(scope: Scope, body: bytes, client: str) -> UpstreamRequest:
    payload = parse_request_body(body)
    validate_messages_request(payload)
    return UpstreamRequest(
        path=scope["path"],
        query=scope.get("query_string", b""),
        headers=tuple(scope["headers"]),
        body=body,
        payload=payload,
        model=payload["model"],
        stream=payload.get("stream", False),
        needs=needs_of(payload),
        client=client,
    )


async def _fit_windows(
    request: UpstreamRequest, attempts: list[Attempt]
) -> tuple[list[Attempt], list[tuple[Attempt, str]]]:
    """The plan's attempts whose context window holds the request, and the skipped ones."""
    attempts = resolve_windows(attempts, long_context=asks_long_context(request.headers))
    if not must_estimate(attempts, window_need_bound(request.body, request.payload)):
        return attempts, []
    if len(request.body) > ESTIMATE_INLINE_BYTES:  # tens of milliseconds: off the event loop
        need = await trio.to_thread.run_sync(window_need, request.payload)
    else:
        need = window_need(request.payload)
    return fit_windows(attempts, need)
