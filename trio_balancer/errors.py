"""Errors a client can see, in Anthropic's shape, and the exception classes that map to them.

Each class names who is at fault and carries the Anthropic ``error.type`` and HTTP status the
client gets. Messages must never contain a secret: they are built from our own words and
from names in the config, never from headers.
"""

from __future__ import annotations

import json

__all__ = [
    "ERROR_TYPE_BY_STATUS",
    "JSON_HEADERS",
    "STATUS_BY_ERROR_TYPE",
    "AuthenticationFailed",
    "BalancerError",
    "ClientGone",
    "HeadersTooLarge",
    "InternalError",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "NotServing",
    "Overloaded",
    "PermissionDenied",
    "ProviderError",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "StartupFailed",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_body",
    "error_type_for_status",
    "leaf_exceptions",
    "status_for_error_type",
]

JSON_HEADERS = [(b"content-type", b"application/json")]

# What Anthropic's API answers for each status; used when an upstream error body is not
# already in Anthropic's shape and for our own errors.
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# The other direction: the status an Anthropic error type is answered with (when a provider
# sent the type without a status: in a stream, or inside a 200).
STATUS_BY_ERROR_TYPE: dict[str, int] = {
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


def status_for_error_type(error_type: str) -> int:
    return STATUS_BY_ERROR_TYPE.get(error_type, 500)


def error_type_for_status(status: int) -> str:
    if status in ERROR_TYPE_BY_STATUS:
        return ERROR_TYPE_BY_STATUS[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(error_type: str, message: str) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


class StartupFailed(Exception):
    """The app cannot start (its ledger cannot be opened...); the message says what and why."""


class BalancerError(Exception):
    """An error answered to the client with an Anthropic error body."""

    status: int = 500
    error_type: str = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.error_type, self.message)


class ClientGone(BalancerError):
    """The client left before its request was complete; nobody is there to answer."""


class InvalidRequest(BalancerError):
    """The client sent a request we cannot serve (bad JSON, missing model...)."""

    status = 400
    error_type = "invalid_request_error"


class MethodNotAllowed(InvalidRequest):
    """The client used a method this endpoint does not answer."""

    status = 405


class AuthenticationFailed(BalancerError):
    """The client did not present a valid key for this balancer."""

    status = 401
    error_type = "authentication_error"


class PermissionDenied(BalancerError):
    """The client is known but may not do this."""

    status = 403
    error_type = "permission_error"


class NotFound(BalancerError):
    """No such endpoint, or no route serves the requested model."""

    status = 404
    error_type = "not_found_error"


class RequestTooLarge(BalancerError):
    """The client's request body is over the configured limit."""

    status = 413
    error_type = "request_too_large"


class UnsupportedMediaType(BalancerError):
    """The client's body is not declared as JSON."""

    status = 415
    error_type = "invalid_request_error"


class RequestTimeout(BalancerError):
    """The client took too long to send its request."""

    status = 408
    error_type = "timeout_error"


class HeadersTooLarge(BalancerError):
    """The client's request headers are over the configured limit."""

    status = 431
    error_type = "invalid_request_error"


class RateLimited(BalancerError):
    """The client is over one of its limits."""

    status = 429
    error_type = "rate_limit_error"


class UpstreamError(BalancerError):
    """An upstream failed in a way that is not the client's fault."""

    status = 502
    error_type = "api_error"


class ProviderError(UpstreamError):
    """A provider answered with an error of its own (an HTTP status or an SSE error event)."""

    def __init__(self, status: int, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type or error_type_for_status(status)


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached (connect, TLS or protocol failure)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within one of its deadlines."""

    status = 504
    error_type = "timeout_error"


class InternalError(BalancerError):
    """A bug of ours while answering; logged with the request id, the app keeps serving."""

    status = 500
    error_type = "api_error"


class NotServing(BalancerError):
    """The app is starting, stopping, or has failed and cannot take requests."""

    status = 503
    error_type = "api_error"


class Overloaded(BalancerError):
    """Every provider that could serve the request is failing or cooling down."""

    status = 529
    error_type = "overloaded_error"


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``'s nested groups, in order; ``[exc]`` if it is not a group.

    A nursery wraps what its tasks raised; what an operator needs is what was raised.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in leaf_exceptions(inner)]
