"""Headless Chromium (Debian's ``chromium``) for tests that need a real browser's behaviour."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

__all__ = ["dump_dom", "require_chromium"]

# What a sandboxed root CI needs, and no traffic of Chromium's own to the closed network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def require_chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return path


async def dump_dom(
    url: str, profile: Path, *, resolve: dict[str, str] | None = None, budget_ms: int = 5000
) -> str:
    """Load ``url``, let its scripts run for ``budget_ms`` of virtual time, return the DOM.

    ``resolve`` maps host names to addresses inside this browser only (how a test gives a page
    a non-loopback origin while every byte stays on 127.0.0.1).
    """
    args = [require_chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    if resolve:
        args.append("--host-resolver-rules=" + ", ".join(f"MAP {h} {a}" for h, a in resolve.items()))
    with trio.fail_after(60):
        result = await trio.run_process([*args, "--dump-dom", url], capture_stdout=True, capture_stderr=True)
    return result.stdout.decode()
