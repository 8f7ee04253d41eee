"""Pure failover decisions: is a failure worth another provider, and whose fault was it.

Rule of thumb: before anything is committed to the client, every failure that another
provider might not have fails over. Only answers that say the *request* is wrong (400, 404,
413, 422 and their SSE twins) go back to the client, since every provider would say the same;
except "prompt too long", which a model with a larger window may not say (``PROMPT_TOO_LONG``),
and "no such model", which is about the target (a region or key without it), not the request
(``MODEL_NOT_HERE``).
"""

from __future__ import annotations

import attrs

from trio_balancer.policy.health import FailureKind

__all__ = [
    "CLIENT_FAULT",
    "MODEL_NOT_HERE",
    "PROMPT_TOO_LONG",
    "Verdict",
    "classify_error_type",
    "classify_status",
]


@attrs.frozen
class Verdict:
    retry: bool  # try the next target
    kind: FailureKind | None  # what it does to the provider's health; None: not its fault
    # The prompt does not fit this model's window: try only targets with a larger one.
    too_long: bool = False
    # The provider does not serve the model asked for: the next target may.
    not_here: bool = False


CLIENT_FAULT = Verdict(retry=False, kind=None)
# A "prompt too long" 400 is the one request error another target may not give: a model with a
# larger window. Nobody's fault, so health is untouched; with no larger target left, the flight
# relays the provider's own answer, as for any client error.
PROMPT_TOO_LONG = Verdict(retry=True, kind=None, too_long=True)
# A model this provider does not have (Bedrock's model not in the region, Vertex's not in the
# project): the next target, health untouched. If every target said so, the last answer is
# relayed (the client asked for a model nobody has); after any other failure, the client gets
# "every provider failed" and retries.
MODEL_NOT_HERE = Verdict(retry=True, kind=None, not_here=True)


def classify_status(status: int, *, passthrough: bool) -> Verdict:
    """A non-200 HTTP answer from a provider."""
    if status in (401, 403):
        # With the client's own key forwarded, a rejected key is the client's to fix.
        return CLIENT_FAULT if passthrough else Verdict(True, FailureKind.AUTH)
    if status == 402:
        return CLIENT_FAULT if passthrough else Verdict(True, FailureKind.AUTH)
    if status == 408:
        return Verdict(True, FailureKind.TIMEOUT)
    if status == 429:
        return Verdict(True, FailureKind.RATE_LIMITED)
    if status in (503, 529):
        return Verdict(True, FailureKind.OVERLOADED)
    if status == 409 or status >= 500:
        return Verdict(True, FailureKind.SERVER)
    return CLIENT_FAULT  # 400, 404, 413, 422 and any other 4xx


_ERROR_TYPES = {
    "overloaded_error": Verdict(True, FailureKind.OVERLOADED),
    "rate_limit_error": Verdict(True, FailureKind.RATE_LIMITED),
    "api_error": Verdict(True, FailureKind.SERVER),
    "timeout_error": Verdict(True, FailureKind.TIMEOUT),
}
_AUTH_TYPES = frozenset({"authentication_error", "permission_error", "billing_error"})


def classify_error_type(error_type: str, *, passthrough: bool) -> Verdict:
    """An Anthropic ``error.type`` seen in an SSE ``event: error`` before commit."""
    if error_type in _ERROR_TYPES:
        return _ERROR_TYPES[error_type]
    if error_type in _AUTH_TYPES:
        return CLIENT_FAULT if passthrough else Verdict(True, FailureKind.AUTH)
    if error_type in ("invalid_request_error", "not_found_error", "request_too_large"):
        return CLIENT_FAULT
    return Verdict(True, FailureKind.SERVER)  # unknown types: assume the provider's trouble
