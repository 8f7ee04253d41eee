"""Which of a plan's providers can take a request as it is: the others skipped, and why. Pure.

A request that needs what dropping would change (a server tool, MCP servers, code execution,
a required output format, a document of a kind) is never sent to a provider that lacks it
(``config/capabilities.py``); making the request fit the rest is ``upstream/fit.py``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from trio_balancer.errors import InvalidRequest
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol.features import Need

__all__ = ["fit_plan"]


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
