"""Which of a plan's providers can take a request as it is: the others skipped, and why. Pure.

A request that needs what dropping would change (a server tool, MCP servers, code execution,
a required output format, a document of a kind) is never sent to a provider that lacks it
(``config/capabilities.py``); making the request fit the rest is ``upstream/fit.py``'s. A
target whose context window cannot hold the request is skipped too (``resolve_windows``, then
``must_estimate`` and ``fit_windows``; never all), and after a "prompt too long" answer only
larger windows are left (``larger_windows``).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from trio_balancer.errors import InvalidRequest
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol.features import Need
from trio_balancer.protocol.windows import known_window

__all__ = ["fit_plan", "fit_windows", "larger_windows", "must_estimate", "resolve_windows", "window_of"]


def fit_plan(
    attempts: Sequence[Attempt], needs: Sequence[Need]
) -> tuple[list[Attempt], list[tuple[Attempt, str]]]:
    """The plan's attempts that can take the request as it is, and the skipped ones with why.

    With none left, the client gets a 400 that names what its request needs and what each
    provider lacks: sending it anyway, stripped, would answer a different question.
    """
    kept: list[Attempt] = []
    skipped: list[tuple[Attempt, str]] = []
    for attempt in attempts:
        why = attempt.provider.capabilities.first_lack(needs) if needs else None
        if why is None:
            kept.append(attempt)
        else:
            skipped.append((attempt, why))
    if not kept and skipped:
        each = "; ".join(f"{a.provider.name} {why}" for a, why in skipped)
        raise InvalidRequest(f"no provider for this model can take this request as sent: {each}")
    return kept, skipped


def window_of(attempt: Attempt, *, long_context: bool = False) -> int:
    """The attempt's context window: its target's, else its provider's, else the known
    models' table; 0 when none knows."""
    return (
        attempt.context_window
        or attempt.provider.capabilities.context_window
        or known_window(attempt.model, long_context=long_context)
    )


def resolve_windows(attempts: Sequence[Attempt], *, long_context: bool = False) -> list[Attempt]:
    """The attempts, each with its window resolved by :func:`window_of`."""
    return [attrs.evolve(a, context_window=window_of(a, long_context=long_context)) for a in attempts]


def must_estimate(attempts: Sequence[Attempt], at_most: int) -> bool:
    """Whether a known window is smaller than ``at_most``, a cheap upper bound of the need.

    The estimate reads every text of the request (12-16 ms of CPU on a 116 KB Claude Code body,
    bench/RESULTS.md), and most requests fit every window by far: then it is not made.
    """
    return any(0 < a.context_window < at_most for a in attempts)


def fit_windows(attempts: Sequence[Attempt], need: int) -> tuple[list[Attempt], list[tuple[Attempt, str]]]:
    """The attempts (windows resolved) whose window holds ``need`` tokens (estimated input plus
    ``max_tokens``), and the skipped ones with why.

    A window of 0 (unknown) is never skipped. If every attempt would be skipped, the ones with
    the largest window are kept: the estimate is rough (within about 17 % per kind of text),
    so the provider decides, and its "prompt too long" answer is the client's to see.
    """
    fits = [not a.context_window or a.context_window >= need for a in attempts]
    if attempts and not any(fits):
        largest = max(a.context_window for a in attempts)
        fits = [a.context_window == largest for a in attempts]
    kept = [a for a, ok in zip(attempts, fits, strict=True) if ok]
    skipped = [
        (a, f"context window {a.context_window} < {need} estimated tokens")
        for a, ok in zip(attempts, fits, strict=True)
        if not ok
    ]
    return kept, skipped


def larger_windows(remaining: Sequence[Attempt], failed: Attempt) -> list[Attempt]:
    """After ``failed`` answered "prompt too long": the remaining attempts that may hold it.

    With the failed window known, those whose window is larger or unknown; with it unknown,
    every remaining attempt (a different model may well hold more).
    """
    if not failed.context_window:
        return list(remaining)
    return [a for a in remaining if not a.context_window or a.context_window > failed.context_window]
