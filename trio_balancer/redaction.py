"""Text from an upstream, made safe to show: the keys we sent and key-shaped strings removed. Pure.

A provider's error message is the one piece of upstream text the balancer itself passes on
(to the client, the logs, the ledger's attempts). Providers and the gateways in front of them
do echo credentials back ("Incorrect API key provided: sk-proj-..."), so every such text goes
through :func:`scrub` with the keys the balancer sent for that request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "redact_url", "scrub"]

REDACTED = "[redacted]"

# Shapes of credentials: the prefixes providers put on their keys, bearer and basic tokens,
# JWTs, and any long run of key characters that mixes letters and digits (request ids are
# shorter than 32).
_KEY_SHAPED = re.compile(
    r"(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|(?:gsk|ghp|gho|github_pat|hf|xai|tb)[_\-][A-Za-z0-9_\-]{16,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*"
    r"|(?i:x-api-key|api[_\-]?key|access[_\-]?token|secret)[\"']?\s*[:=]\s*[\"']?[^\s\"',;}]{6,}"
    r"|(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}"
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without any of ``secrets`` (the exact keys sent) nor anything key-shaped."""
    for secret in secrets:
        if secret and len(secret) >= 6 and secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPED.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """A service URL (database, Redis) without its password, for logs, reprs and /status.

    The user part may be empty (``redis://:password@host``), which is how Redis URLs carry a
    password alone.
    """
    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)
