"""How one attempt fails: :class:`AttemptFailed`, and the few ways it is built.

Each failure carries the failover verdict (may another provider do better, and what it says
about this provider's health) and the error the client gets if no other provider serves.
"""

from __future__ import annotations

import attrs

from trio_balancer.config import ProviderConfig
from trio_balancer.errors import (
    JSON_HEADERS,
    BalancerError,
    ProviderError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
    status_for_error_type,
)
from trio_balancer.policy.failover import Verdict, classify_error_type
from trio_balancer.policy.health import FailureKind

__all__ = ["AttemptFailed", "ErrorAnswer", "broken", "provider_error", "timed_out", "unavailable"]


@attrs.frozen
class ErrorAnswer:
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
        answer: ErrorAnswer | None = None,
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


def broken(provider: str, what: str) -> AttemptFailed:
    """The provider's response is unusable (too large, not the format it claims...)."""
    return AttemptFailed(Verdict(True, FailureKind.SERVER), UpstreamError(f"provider {provider!r}: {what}"))


def unavailable(
    provider: str, what: str, *, kind: FailureKind = FailureKind.SERVER, connect: bool = False
) -> AttemptFailed:
    """The provider could not be reached, or its response ended early."""
    return AttemptFailed(
        Verdict(True, kind), UpstreamUnavailable(f"provider {provider!r}: {what}"), connect=connect
    )


def timed_out(provider: str, what: str) -> AttemptFailed:
    return AttemptFailed(
        Verdict(True, FailureKind.TIMEOUT), UpstreamTimeout(f"provider {provider!r}: {what}")
    )


def provider_error(
    provider: ProviderConfig,
    error_type: str,
    message: str,
    body: bytes | None = None,
    *,
    sent_to_client: bool = False,
) -> AttemptFailed:
    """The provider answered with an error of ``error_type`` (in a stream, or inside a 200).

    ``body`` is the answer to relay if no other provider serves (an error body already
    scrubbed); without one, an Anthropic error body of ``message`` is made.
    """
    status = status_for_error_type(error_type)
    answer = None
    if not sent_to_client:
        answer = ErrorAnswer(
            status, list(JSON_HEADERS), body if body is not None else error_body(error_type, message)
        )
    return AttemptFailed(
        classify_error_type(error_type, passthrough=provider.passthrough),
        ProviderError(status, message, error_type=error_type),
        answer=answer,
        sent_to_client=sent_to_client,
    )
