"""What happened to each provider's health: state changes and failovers per hour. Pure.

The console's health page reads it. It remembers this process's view since it started (what
its flights saw, and what other instances published through Redis), bounded: the last
``max_events`` state changes and ``hours`` hourly failover counts per provider. Older history is
in the ledger (each record's attempts say why it failed over).
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["HealthEvent", "HealthHistory"]


@attrs.frozen
class HealthEvent:
    at: float  # wall clock, unix seconds
    provider: str
    state: str  # "cooling" | "healthy"
    cooling_for_s: float  # how long the cooldown is (0 when it ends)
    reason: str | None  # the error that started it; "on instance x" when another saw it


class HealthHistory:
    def __init__(self, *, max_events: int = 5000, hours: int = 48) -> None:
        self.hours = hours
        self._events: deque[HealthEvent] = deque(maxlen=max_events)
        self._failovers: dict[str, dict[int, int]] = {}  # provider -> hour index -> count
        self._reasons: dict[str, dict[str, int]] = {}  # provider -> reason -> count (all time)

    def changed(self, at: float, provider: str, state: str, cooling_for_s: float, reason: str | None) -> None:
        last = next((e for e in reversed(self._events) if e.provider == provider), None)
        if last is not None and last.state == state == "healthy":
            return  # nothing changed
        self._events.append(HealthEvent(at, provider, state, max(0.0, cooling_for_s), reason))

    def failover(self, at: float, provider: str, reason: str) -> None:
        """A request left ``provider`` for the next target, for ``reason`` (a failure kind)."""
        hour = int(at // 3600)
        per_hour = self._failovers.setdefault(provider, {})
        per_hour[hour] = per_hour.get(hour, 0) + 1
        for old in [h for h in per_hour if h <= hour - self.hours]:
            del per_hour[old]
        reasons = self._reasons.setdefault(provider, {})
        reasons[reason] = reasons.get(reason, 0) + 1

    def events(self, provider: str | None = None, limit: int = 200) -> list[HealthEvent]:
        """The latest state changes, newest first."""
        picked = [e for e in reversed(self._events) if provider is None or e.provider == provider]
        return picked[:limit]

    def failovers_per_hour(self, now: float) -> dict[str, list[int]]:
        """Per provider, the failovers away from it in each of the last ``hours`` hours (the
        current one last)."""
        current = int(now // 3600)
        return {
            provider: [per_hour.get(h, 0) for h in range(current - self.hours + 1, current + 1)]
            for provider, per_hour in sorted(self._failovers.items())
        }

    def reasons(self, provider: str) -> dict[str, int]:
        return dict(self._reasons.get(provider, {}))
