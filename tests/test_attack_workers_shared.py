"""Attacks on ``serve --workers N`` (issue 20): what the workers share (ledger, budgets,
/metrics) under load, restarts and reloads; and the --workers flag."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="SO_REUSEPORT workers: Linux")

NO_DEDUP = {"x-balancer-no-dedup": "1"}


def metric_sum(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_workers_flag_with_a_unicode_digit_is_refused_not_a_traceback() -> None:
    """'²'.isdigit() is True but int('²') raises: --workers ² must be the usual refusal (2)."""
    result = subprocess.run(
        [sys.executable, "-m", "trio_balancer", "serve", "--workers", "²", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
