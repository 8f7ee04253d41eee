"""Recent history for the status page: per-minute buckets over the last hour. Pure.

Prometheus is for long-term storage; this is what an operator sees at a glance without one:
requests, errors and tokens in the last hour, and per-minute time to first byte and forward
latency for the chart. Memory is fixed: 60 buckets of a few numbers each.
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["Minute", "RecentStats"]

WINDOW_MINUTES = 60


@attrs.define
class Minute:
    start: int  # unix minute
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ttfb_sum: float = 0.0
    ttfb_count: int = 0
    forward_sum: float = 0.0
    forward_count: int = 0
    forward_max: float = 0.0

    @property
    def ttfb_ms(self) -> float | None:
        return None if not self.ttfb_count else round(self.ttfb_sum / self.ttfb_count * 1000, 2)

    @property
    def forward_us(self) -> float | None:
        return None if not self.forward_count else round(self.forward_sum / self.forward_count * 1e6, 1)


class RecentStats:
    def __init__(self) -> None:
        self._minutes: deque[Minute] = deque(maxlen=WINDOW_MINUTES)

    def _bucket(self, now: float) -> Minute:
        minute = int(now // 60)
        if not self._minutes or self._minutes[-1].start != minute:
            self._minutes.append(Minute(minute))
        return self._minutes[-1]

    def request(
        self, now: float, *, status: int | None, input_tokens: int, output_tokens: int, ttfb: float | None
    ) -> None:
        m = self._bucket(now)
        m.requests += 1
        if status is None or status >= 400:
            m.errors += 1
        m.input_tokens += input_tokens
        m.output_tokens += output_tokens
        if ttfb is not None:
            m.ttfb_sum += ttfb
            m.ttfb_count += 1

    def forward(self, now: float, seconds: float) -> None:
        m = self._bucket(now)
        m.forward_sum += seconds
        m.forward_count += 1
        if seconds > m.forward_max:
            m.forward_max = seconds

    def window(self, now: float, minutes: int = WINDOW_MINUTES) -> list[Minute]:
        """The buckets of the last ``minutes`` minutes, oldest first, gaps filled with zeros."""
        current = int(now // 60)
        have = {m.start: m for m in self._minutes}
        return [have.get(t, Minute(t)) for t in range(current - minutes + 1, current + 1)]
