"""Errors of conversion, and OpenAI-style error bodies -> Anthropic error bodies. Pure."""

from __future__ import annotations

import json

from trio_balancer.errors import error_body, error_type_for_status

__all__ = ["ConversionError", "UpstreamStreamError", "openai_error_to_anthropic"]


class ConversionError(Exception):
    """A foreign answer (stream or JSON) cannot be turned into a well-formed Anthropic one."""


class UpstreamStreamError(ConversionError):
    """The upstream's answer carried an error object instead of content; ``error_type`` is
    its Anthropic ``error.type``."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def openai_error_to_anthropic(status: int, body: bytes, provider: str) -> tuple[str, bytes]:
    """``(error_type, body)`` in Anthropic's shape; the type follows the HTTP status.

    OpenAI's own ``type``/``code`` values (``invalid_request_error``, ``insufficient_quota``,
    ``context_length_exceeded``...) are kept in the message, where a person can read them.
    """
    error_type = error_type_for_status(status)
    message = ""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "")
        code = err.get("code") or err.get("type")
        if code:
            message = f"{message} ({code})" if message else str(code)
    elif isinstance(err, str):
        message = err
    elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        message = parsed["message"]
    else:  # not JSON (an HTML page from a gateway): what it says stays out of our message
        message = f"{len(body)} bytes that are not JSON" if body.strip() else ""
    text = f"provider {provider!r} answered HTTP {status}" + (f": {message}" if message else "")
    return error_type, error_body(error_type, text)
