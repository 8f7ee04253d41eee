"""structlog configuration and the redaction processor.

Only the sync log methods are used: structlog's async ones go through asyncio and fail
under Trio. Every line passes :func:`redact`, so a key that reaches a log call by mistake
(an exception message, a header dump) is masked before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["REDACTED", "configure", "get_logger", "redact"]

REDACTED = "[redacted]"
# Keys that name a secret: "x-api-key", "authorization", "access_token", "client_secret"...
# A singular "token" at the end only: "input_tokens" and "max_tokens" are counts, not secrets.
_SECRET_KEYS = re.compile(
    r"(api[-_]?key|authorization|token|secret|password|passwd|credentials?|cookie)$", re.I
)
# Provider keys (sk-ant-..., sk-proj-..., sk-...), bearer tokens, and x-api-key values inline.
_SECRET_VALUES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{6,}=*|(?i:x-api-key)[\"']?\s*[:=]\s*[\"']?[^\s\"',;]{6,})"
)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value) if ("sk-" in value or _maybe_secret(value)) else value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEYS.search(k) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def _maybe_secret(value: str) -> bool:
    low = value.lower()
    return "bearer" in low or "api-key" in low


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values under secret-looking keys and key-shaped substrings anywhere."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(value)
    return event_dict


_level = logging.INFO


def debug_enabled() -> bool:
    """Whether debug lines are written: hot paths check this once instead of building them."""
    return _level <= logging.DEBUG


def configure(level: str = "info", fmt: str = "console", stream: Any = None) -> None:
    """Configure structlog once for the process: JSON lines or readable console output."""
    global _level
    _level = logging.getLevelNamesMapping()[level.upper()]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
