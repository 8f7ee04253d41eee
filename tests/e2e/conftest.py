"""The e2e suite's Claude Code CLI: installed from the npm registry once, into the checkout.

Kept in ``.cache/claude-code`` between runs. Tests that need it are skipped, with the reason in
the summary, only when npm or its registry is unreachable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trio_balancer.tools.claude_code import ClaudeCodeNotFound, install

from .capture import CACHE


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed here: cannot install the Claude Code CLI")
    try:
        return install(CACHE, timeout=600)
    except subprocess.CalledProcessError as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        if re.search(r"ENOTFOUND|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|network", stderr):
            pytest.skip(f"the npm registry cannot be reached: {stderr.strip()[:300]}")
        raise
    except ClaudeCodeNotFound as exc:
        pytest.fail(f"npm installed {CACHE} but no Claude Code binary was found: {exc}")
