"""Pure reading of providers' rate-limit headers, to avoid 429s instead of only reacting.

Anthropic sends ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
remaining,reset}`` (reset as an RFC 3339 time) and ``retry-after`` (seconds) on 429/529.
OpenAI-compatible servers send ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with
resets as durations (``1s``, ``6m0s``, ``250ms``). Both are folded into one small state per
provider: how much is left, and until when that reading holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from email.utils import parsedate_to_datetime

import attrs

__all__ = ["RateLimitState", "Reading", "parse_duration", "read_headers", "retry_after_seconds"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """``6m0s`` -> 360.0, ``250ms`` -> 0.25, ``1.5s`` -> 1.5; plain numbers are seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _reset_in(value: str, now_wall: float) -> float | None:
    """A reset header as seconds from now: an RFC 3339 time or a duration."""
    if value[:4].isdigit() and "-" in value:
        try:
            return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now_wall)
        except ValueError:
            return None
    return parse_duration(value)


def retry_after_seconds(headers: Iterable[tuple[str, str]], now_wall: float) -> float | None:
    """``retry-after`` (seconds or HTTP date), else the latest rate-limit reset, in seconds."""
    resets: list[float] = []
    for name, value in headers:
        if name == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                try:
                    return max(0.0, parsedate_to_datetime(value).timestamp() - now_wall)
                except (TypeError, ValueError):
                    continue
        if name == "retry-after-ms":
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                continue
        if (name.startswith("anthropic-ratelimit-") and name.endswith("-reset")) or name.startswith(
            "x-ratelimit-reset-"
        ):
            r = _reset_in(value, now_wall)
            if r is not None:
                resets.append(r)
    return max(resets) if resets else None


@attrs.frozen
class Reading:
    """One dimension of a provider's limit (requests, or a kind of tokens)."""

    remaining: int
    limit: int | None
    reset_at: float  # on the caller's monotonic clock


_ANTHROPIC = re.compile(
    r"anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)"
)
_OPENAI = re.compile(r"x-ratelimit-(limit|remaining|reset)-(requests|tokens)")


def read_headers(headers: Iterable[tuple[str, str]], now: float, now_wall: float) -> dict[str, Reading]:
    """Readings per dimension from one response's headers (``now`` is the monotonic clock)."""
    raw: dict[str, dict[str, str]] = {}
    for name, value in headers:
        if m := _ANTHROPIC.fullmatch(name):
            raw.setdefault(m.group(1), {})[m.group(2)] = value
        elif m := _OPENAI.fullmatch(name):
            raw.setdefault(m.group(2), {})[m.group(1)] = value
    out: dict[str, Reading] = {}
    for dim, fields in raw.items():
        try:
            remaining = int(fields["remaining"])
        except (KeyError, ValueError):
            continue
        try:
            limit: int | None = int(fields["limit"])
        except (KeyError, ValueError):
            limit = None
        reset = _reset_in(fields.get("reset", ""), now_wall) if fields.get("reset") else None
        out[dim] = Reading(
            remaining=remaining, limit=limit, reset_at=now + (reset if reset is not None else 60.0)
        )
    return out


@attrs.define
class RateLimitState:
    """The latest readings for one provider; ``pressed`` says it is about to run out."""

    readings: dict[str, Reading] = attrs.Factory(dict)
    # Below this fraction of a limit a provider is "about to run out" even if this request fits.
    headroom: float = 0.02

    def update(self, readings: dict[str, Reading]) -> None:
        self.readings.update(readings)

    def pressed(self, now: float, need_tokens: int = 0) -> bool:
        for dim, r in self.readings.items():
            if now >= r.reset_at:
                continue  # stale: the window has reset since
            if dim == "requests":
                if r.remaining < 1 or (r.limit and r.remaining < r.limit * self.headroom):
                    return True
            elif dim in ("tokens", "input-tokens"):
                if r.remaining < need_tokens or (r.limit and r.remaining < r.limit * self.headroom):
                    return True
            elif r.remaining < 1:  # output tokens: this request's need is unknown up front
                return True
        return False
