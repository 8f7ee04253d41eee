"""Text from an upstream, made safe to show: the keys we sent and key-shaped strings removed. Pure.

A provider's error message is the one piece of upstream text the balancer itself passes on
(to the client, the logs, the ledger's attempts). Providers and the gateways in front of them
do echo credentials back ("Incorrect API key provided: sk-proj-..."), so every such text goes
through :func:`scrub` with the keys the balancer sent for that request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "redact_url", "scrub", "url_host"]

REDACTED = "[redacted]"

# Shapes of credentials: the prefixes providers put on their keys, bearer and basic tokens,
# JWTs, and any long run of key characters that mixes letters and digits (request ids are
# shorter than 32). One scan from left to right: at each position the first shape that matches
# there is redacted and the scan goes on after it, as a single regex alternation would; but
# the two shapes whose failures cost a pass over a whole run (the long run, which must mix
# letters and digits, and the JWT, which needs a dot after its first segment) are decided
# once per run instead of once per position, so the scan is linear. (As one regex with
# lookaheads it was quadratic: 256 KB of letters in an error body froze the event loop.)
_KEY_PREFIXED = re.compile(
    r"(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|(?:gsk|ghp|gho|github_pat|hf|xai|tb)[_\-][A-Za-z0-9_\-]{16,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*"
    r"|(?i:x-api-key|api[_\-]?key|access[_\-]?token|secret)[\"']?\s*[:=]\s*[\"']?[^\s\"',;}]{6,}"
)
_RUN = re.compile(r"[A-Za-z0-9_\-]+")
_JWT_REST = re.compile(r"[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*")  # after "eyJ<segment>."
_LONG_RUN = 32


class _Runs:
    """The maximal runs of key characters, each with the last position from which the run's
    rest is a long mixed run (the shape) and where a JWT starting in it would end."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans = [m.span() for m in _RUN.finditer(text)]
        self._jwt_end: dict[int, int | None] = {}

    def containing(self, pos: int, index: int) -> int:
        """The index of the first run that ends after ``pos`` (from ``index`` on)."""
        while index < len(self.spans) and self.spans[index][1] <= pos:
            index += 1
        return index

    def long_from(self, index: int) -> int:
        """The last start in run ``index`` from which the rest is a long mixed run; -1: none."""
        start, end = self.spans[index]
        run = self.text[start:end]
        last_digit = max(run.rfind(d) for d in "0123456789")
        limit = min(last_digit, _last_letter(run), end - start - _LONG_RUN)
        return start + limit if limit >= 0 else -1

    def jwt_end(self, index: int) -> int | None:
        """Where a JWT whose first segment ends this run would end; None if it cannot."""
        if index not in self._jwt_end:
            end = self.spans[index][1]
            rest = _JWT_REST.match(self.text, end + 1) if self.text[end : end + 1] == "." else None
            self._jwt_end[index] = rest.end() if rest else None
        return self._jwt_end[index]


def _last_letter(run: str) -> int:
    """The index of the run's last ASCII letter; -1 if it has none (runs are ASCII)."""
    for i in range(len(run) - 1, -1, -1):
        if run[i].isalpha():
            return i
    return -1


def _spans(text: str) -> list[tuple[int, int]]:
    """What to redact, left to right, each shape tried in turn at each position."""
    runs = _Runs(text)
    spans: list[tuple[int, int]] = []
    pos, index = 0, 0
    prefixed = _KEY_PREFIXED.search(text)
    long_cache: dict[int, int] = {}
    while pos < len(text):
        if prefixed is not None and prefixed.start() < pos:
            prefixed = _KEY_PREFIXED.search(text, pos)
        index = runs.containing(pos, index)
        candidate = _run_shape(runs, pos, index, long_cache, stop=prefixed.start() if prefixed else None)
        if prefixed is not None and (candidate is None or prefixed.start() <= candidate[0]):
            spans.append(prefixed.span())
            pos = prefixed.end()
        elif candidate is not None:
            spans.append(candidate)
            pos = candidate[1]
        else:
            break
    return spans


def _run_shape(
    runs: _Runs, pos: int, index: int, long_cache: dict[int, int], *, stop: int | None
) -> tuple[int, int] | None:
    """The leftmost JWT or long mixed run at or after ``pos``, not starting after ``stop``.

    In one run the long shape can only start at its first position considered (a suffix of a
    run that is not a long mixed run has no such suffix either), and a JWT's first segment
    always ends at the run's end; at the same position a JWT comes first, as in the regex.
    """
    text = runs.text
    for i in range(index, len(runs.spans)):
        start, end = runs.spans[i]
        first = max(start, pos)
        if stop is not None and first > stop:
            return None
        if i not in long_cache:
            long_cache[i] = runs.long_from(i)
        at = text.find("eyJ", first, end)
        jwt = runs.jwt_end(i) if at >= 0 and end - at - 3 >= 8 else None
        if first <= long_cache[i]:  # the long shape starts at `first`
            return (first, jwt) if jwt is not None and at == first else (first, end)
        if jwt is not None:
            return None if stop is not None and at > stop else (at, jwt)
    return None


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without any of ``secrets`` (the exact keys sent) nor anything key-shaped."""
    for secret in secrets:
        if secret and len(secret) >= 6 and secret in text:
            text = text.replace(secret, REDACTED)
    out: list[str] = []
    done = 0
    for start, end in _spans(text):
        out += [text[done:start], REDACTED]
        done = end
    out.append(text[done:])
    return "".join(out)


def url_host(url: str | None) -> str | None:
    """What may be said of a URL whose path may be its secret (a webhook's): scheme and host."""
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


def redact_url(url: str) -> str:
    """A service URL (database, Redis) without its password, for logs, reprs and /status.

    The user part may be empty (``redis://:password@host``), which is how Redis URLs carry a
    password alone.
    """
    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)
