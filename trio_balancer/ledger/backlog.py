"""Records that no store would take, held in memory in order, and when to try them again.

Sans-I/O: the writer passes the clock in and does the writing; this keeps the records, the
bound and the backoff (0.1 s doubling to 5 s, back to 0.1 s once the backlog is written).
"""

from __future__ import annotations

import itertools
import math
from collections import deque

from trio_balancer.ledger.record import Record

__all__ = ["BACKLOG_MAX", "RETRY_FIRST_S", "RETRY_MAX_S", "Backlog"]

# A record is ~1 KB in memory, so the bound costs at most ~50 MB; at a busy team's ~20
# requests/s it covers 40 minutes of a full disk.
BACKLOG_MAX = 50_000
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


class Backlog:
    """The held records, oldest first, with the time their next try is due.

    Records being retried stay in the backlog until they are written (:meth:`head`, then
    :meth:`settle`), so ``len()`` never reads empty mid-retry: it is what ``degraded`` and
    /status count.
    """

    def __init__(self) -> None:
        self._records: deque[Record] = deque()
        self.retry_in = RETRY_FIRST_S
        self.retry_at = 0.0

    def __len__(self) -> int:
        return len(self._records)

    def hold(self, batch: list[Record], now: float) -> list[Record]:
        """Add ``batch`` at the end; returns the oldest records pushed past ``BACKLOG_MAX``."""
        if not self._records:
            self.retry_at = now + self.retry_in
        self._records.extend(batch)
        overflow = []
        while len(self._records) > BACKLOG_MAX:
            overflow.append(self._records.popleft())
        return overflow

    def wait(self, now: float) -> float:
        """Seconds until the next try is due; infinite while nothing is held."""
        return max(0.0, self.retry_at - now) if self._records else math.inf

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def head(self, limit: int) -> list[Record]:
        """The oldest ``limit`` records, left in place while they are written."""
        return list(itertools.islice(self._records, limit))

    def settle(self, taken: int, left: list[Record]) -> None:
        """The ``taken`` oldest records were tried; ``left`` (not stored) stay first in line."""
        for _ in range(taken):
            self._records.popleft()
        self._records.extendleft(reversed(left))

    def back_off(self, now: float) -> None:
        """A try failed: wait twice as long (up to ``RETRY_MAX_S``) before the next."""
        self.retry_in = min(self.retry_in * 2, RETRY_MAX_S)
        self.retry_at = now + self.retry_in

    def recovered(self) -> None:
        """Everything held was written: the next trouble starts from the first delay again."""
        self.retry_in = RETRY_FIRST_S

    def pop_oldest(self) -> Record:
        return self._records.popleft()
