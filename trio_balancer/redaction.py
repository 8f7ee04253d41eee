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
# JWTs. Every alternative is bounded by a literal prefix, so matching stays linear.
_PREFIXED = (
    r"(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|(?:gsk|ghp|gho|github_pat|hf|xai|tb)[_\-][A-Za-z0-9_\-]{16,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*"
    r"|(?i:x-api-key|api[_\-]?key|access[_\-]?token|secret)[\"']?\s*[:=]\s*[\"']?[^\s\"',;}]{6,}"
)
_KEY_PREFIXED = re.compile(_PREFIXED)
# And any long run of key characters that mixes letters and digits (request ids are shorter
# than 32). Matched whole and judged in Python: lookaheads for "has a digit" tried at every
# position made a long run of letters quadratic (256 KB of them in an error body froze the
# event loop for minutes).
_KEY_RUN = re.compile(r"[A-Za-z0-9_\-]{32,}")
_DIGIT = re.compile(r"[0-9]")
_LETTER = re.compile(r"[A-Za-z]")


def _mixed(run: str) -> bool:
    return _DIGIT.search(run) is not None and _LETTER.search(run) is not None


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without any of ``secrets`` (the exact keys sent) nor anything key-shaped.

    Both shapes are found on the same text and every span either finds is redacted, spans
    that overlap as one: a key inside a long run and a run around a key alike.
    """
    for secret in secrets:
        if secret and len(secret) >= 6 and secret in text:
            text = text.replace(secret, REDACTED)
    spans = [m.span() for m in _KEY_PREFIXED.finditer(text)]
    spans += [m.span() for m in _KEY_RUN.finditer(text) if _mixed(m.group())]
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    done = 0  # text before this is written out or redacted
    for start, end in spans:
        if start < done:  # overlaps the span just redacted: extend it
            done = max(done, end)
            continue
        out += [text[done:start], REDACTED]
        done = end
    out.append(text[done:])
    return "".join(out)


def redact_url(url: str) -> str:
    """A service URL (database, Redis) without its password, for logs, reprs and /status.

    The user part may be empty (``redis://:password@host``), which is how Redis URLs carry a
    password alone.
    """
    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)
