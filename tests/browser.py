"""Headless Chromium (Debian's ``chromium``) for tests that need a real browser's behaviour."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import trio

__all__ = ["dump_dom", "load_page", "require_chromium", "screenshot"]

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


_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\] (.*)")


async def load_page(url: str, profile: Path, *, budget_ms: int = 3000) -> tuple[str, list[str]]:
    """``url``'s DOM once loaded, and every message the page wrote to its console (errors,
    a refused style or script under the page's CSP, an uncaught exception), from Chromium's log."""
    args = [require_chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
            "--enable-logging=stderr", "--v=0"]  # fmt: skip
    with trio.fail_after(60):
        result = await trio.run_process([*args, "--dump-dom", url], capture_stdout=True, capture_stderr=True)
    messages = _CONSOLE.findall(result.stderr.decode("utf-8", "replace"))
    return result.stdout.decode(), messages


async def screenshot(url: str, profile: Path, out: Path, *, size: str = "1280,1400") -> None:
    args = [
        require_chromium(),
        *FLAGS,
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        f"--window-size={size}",
    ]
    with trio.fail_after(60):
        await trio.run_process([*args, f"--screenshot={out}", url], capture_stdout=True, capture_stderr=True)
