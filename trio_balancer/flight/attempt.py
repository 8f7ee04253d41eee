"""One HTTP attempt at one provider: its deadlines, its transport errors, its error answers.

:func:`call_provider` sends the request and hands a 200 response to the relay; everything
else becomes an :class:`AttemptFailed` with the verdict for failover and health. Three
deadlines bound an attempt: the first byte (response headers), the idle gap between body
chunks (slid forward by the relay as data comes, and once more after each publish: a client's
time to take a chunk is not the provider's idleness), and the whole response. A chunk handed
off to a lone client is written inside them, in Hypercorn's shielded write: the writer stops
handing off to a client slow to take one (``app/writer.py``), so that happens once at most.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import cast

import attrs
import httpx
import trio

from trio_balancer.config import ProviderConfig
from trio_balancer.errors import JSON_HEADERS, ProviderError, error_body, error_type_for_status
from trio_balancer.flight.failures import AttemptFailed, ErrorAnswer, timed_out, unavailable
from trio_balancer.logging import get_logger
from trio_balancer.policy.failover import (
    CLIENT_FAULT,
    MODEL_NOT_HERE,
    PROMPT_TOO_LONG,
    classify_error_type,
    classify_status,
)
from trio_balancer.policy.health import FailureKind
from trio_balancer.policy.ratelimits import read_headers, retry_after_seconds
from trio_balancer.protocol.answers import answer_format
from trio_balancer.protocol.upstream_errors import error_type_of, model_not_served, scrub_error_body
from trio_balancer.protocol.windows import prompt_too_long
from trio_balancer.redaction import scrub
from trio_balancer.upstream.headers import response_headers
from trio_balancer.upstream.providers import ProviderRuntime

__all__ = ["MAX_ERROR_BODY", "IdleTimer", "UpstreamResponse", "call_provider"]

log = get_logger("trio_balancer.flight.attempt")

# An error body from a provider is read whole before it is relayed; this bounds it.
MAX_ERROR_BODY = 256 * 1024
# Slide the idle deadline at most this often: moving a cancel scope deadline re-sorts trio's
# deadline heap, so it is not free per event, and a second of slack on a 300 s bound is noise.
# Never more than a quarter of the idle bound itself, or a short bound would fire on a live
# stream (it did: 15 events in 0.47 s against a 0.5 s bound).
_IDLE_SLIDE_S = 1.0


class IdleTimer:
    """The idle deadline of a response body, slid forward as chunks arrive."""

    def __init__(self, scope: trio.CancelScope, idle_s: float) -> None:
        self._scope = scope
        self._idle_s = idle_s
        self._slide_every = min(_IDLE_SLIDE_S, idle_s / 4)
        self._slid_at = trio.current_time()
        scope.deadline = self._slid_at + idle_s

    def touch(self, *, now: bool = False) -> None:
        """Data came; ``now`` slides the deadline at once (few, large chunks: JSON bodies)."""
        t = trio.current_time()
        if now or t - self._slid_at > self._slide_every:
            self._scope.deadline = t + self._idle_s
            self._slid_at = t


@attrs.frozen
class UpstreamResponse:
    """A provider's 200 response, as the relay consumes it."""

    headers: list[tuple[bytes, bytes]]  # what the client may see of the provider's headers
    sse: bool  # an event stream (else a JSON body)
    chunks: AsyncGenerator[bytes, None]  # the body, decoded if the provider compressed it
    idle: IdleTimer


RelayFn = Callable[[UpstreamResponse], Awaitable[None]]  # what consumes a 200 response


async def call_provider(
    runtime: ProviderRuntime,
    url: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    secrets: Sequence[str],
    relay: RelayFn,
    *,
    on_headers: Callable[[float], None],
) -> None:
    """POST ``body`` to ``url`` and relay a 200; ``on_headers`` gets the seconds to headers."""
    provider = runtime.config
    t = provider.timeouts
    name = provider.name
    total = trio.CancelScope(deadline=_deadline(t.total))
    phase = trio.CancelScope(deadline=_deadline(t.first_byte))
    started = trio.current_time()
    in_body = False
    with total:
        with phase:
            try:
                async with runtime.client.stream("POST", url, headers=headers, content=body) as response:
                    ttfb = trio.current_time() - started
                    runtime.latency.observe(ttfb)
                    on_headers(ttfb)
                    in_body = True
                    await _answer(runtime, response, IdleTimer(phase, t.idle), secrets, relay)
            except httpx.TimeoutException as exc:
                raise timed_out(name, _describe(exc)) from None
            except httpx.ConnectError as exc:
                raise unavailable(name, _describe(exc), kind=FailureKind.CONNECT, connect=True) from None
            except httpx.TransportError as exc:
                kind = FailureKind.SERVER if in_body else FailureKind.CONNECT
                raise unavailable(name, _describe(exc), kind=kind) from None
        if phase.cancelled_caught:
            what = f"idle for {t.idle:g} s" if in_body else f"no response headers within {t.first_byte:g} s"
            raise timed_out(name, what)
    if total.cancelled_caught:
        raise timed_out(name, f"response not complete within {t.total:g} s")


async def _answer(
    runtime: ProviderRuntime,
    response: httpx.Response,
    idle: IdleTimer,
    secrets: Sequence[str],
    relay: RelayFn,
) -> None:
    """Read the provider's rate-limit headers, then relay a 200 or fail with its error answer."""
    provider = runtime.config
    text_headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in response.headers.raw]
    wall = time.time()
    readings = read_headers(text_headers, trio.current_time(), wall)
    if readings:
        runtime.limits.update(readings)
    encoding = response.headers.get("content-encoding", "identity").lower()
    decoded = encoding not in ("identity", "")
    headers = response_headers(response.headers.raw, decoded_body=decoded)
    if response.status_code != 200:
        body = await _read_bounded(response, MAX_ERROR_BODY)
        retry_after = retry_after_seconds(text_headers, wall)
        raise _error_answer(provider, response, headers, body, secrets, retry_after)
    answers = answer_format(provider.kind)
    content_type = response.headers.get("content-type", "")
    sse = answers.is_stream(content_type)
    if not answers.own_headers:
        # A converted answer, or a cloud's (Bedrock's event stream is relayed as SSE): the
        # client gets the content type of what it is sent, and of the provider's headers only
        # its request id.
        headers = _converted_headers(
            headers, b"text/event-stream; charset=utf-8" if sse else b"application/json"
        )
    # aclosing: a cancelled flight must close the generator (and the response) right here,
    # not when the garbage collector finds it. (httpx annotates these as AsyncIterator;
    # they are async generators.)
    body_iter = cast(AsyncGenerator[bytes, None], response.aiter_bytes() if decoded else response.aiter_raw())
    async with aclosing(body_iter) as chunks:
        await relay(UpstreamResponse(headers, sse, chunks, idle))


def _error_answer(
    provider: ProviderConfig,
    response: httpx.Response,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    secrets: Sequence[str],
    retry_after: float | None,
) -> AttemptFailed:
    """A provider's HTTP error answer as a failure, with the answer to relay if it is final."""
    status = response.status_code
    verdict = classify_status(status, passthrough=provider.passthrough)
    if verdict.kind is None and prompt_too_long(status, body):
        verdict = PROMPT_TOO_LONG
    elif verdict is CLIENT_FAULT and model_not_served(status, body, provider.kind):
        verdict = MODEL_NOT_HERE  # the provider's own words say it has no such model
    read_error = answer_format(provider.kind).error
    if read_error is not None:
        text_headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in response.headers.raw}
        error_type, body = read_error(status, text_headers, body, provider.name)
        body = scrub_error_body(body, secrets)
        if verdict is CLIENT_FAULT and error_type in _PROVIDER_FAULT_TYPES:
            # A cloud's quota or capacity error under a 400 (Bedrock's ServiceQuotaExceeded),
            # its model failing under a 424 (ModelErrorException), or its credential refused
            # under a 400 (Gemini's API_KEY_INVALID): another provider may not have it.
            verdict = classify_error_type(error_type, passthrough=provider.passthrough)
        headers = _converted_headers(headers, b"application/json")
    else:
        found = error_type_of(body)
        error_type = found or error_type_for_status(status)
        if found is None:
            # Not Anthropic's shape (an HTML page from a gateway...): what it says stays
            # out of our message (it may name hosts, echo headers); its type and size do not.
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            log.info(
                "upstream.error_body",
                provider=provider.name,
                status=status,
                excerpt=scrub(body[:300].decode("utf-8", "replace"), secrets),
            )
            text = f"provider {provider.name!r} answered HTTP {status} ({kind}, {len(body)} bytes)"
            body = error_body(error_type, text)
            headers = [(n, v) for n, v in headers if n != b"content-type"] + JSON_HEADERS
        else:
            body = scrub_error_body(body, secrets)
    what = f"provider {provider.name!r}: HTTP {status} {error_type}"
    return AttemptFailed(
        verdict,
        ProviderError(
            status, what + " (prompt too long)" if verdict.too_long else what, error_type=error_type
        ),
        answer=ErrorAnswer(status, headers, body),
        retry_after=retry_after if verdict.kind else None,
    )


_PROVIDER_FAULT_TYPES = frozenset(
    {
        "rate_limit_error",
        "overloaded_error",
        "timeout_error",
        "api_error",
        "authentication_error",
        "permission_error",
    }
)
# The request id each kind sends, shown to the client as Anthropic's ``request-id``.
_REQUEST_ID_HEADERS = (b"x-request-id", b"x-amzn-requestid", b"x-goog-request-id")


def _converted_headers(upstream: list[tuple[bytes, bytes]], content_type: bytes) -> list[tuple[bytes, bytes]]:
    """What an Anthropic client should see of another kind's headers: the request id."""
    out = [(b"content-type", content_type)]
    out.extend((b"request-id", v) for n, v in upstream if n in _REQUEST_ID_HEADERS)
    return out


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
