"""Finding (and installing) the Claude Code CLI, and the environment that points it at us.

The npm package ``@anthropic-ai/claude-code`` ships a native binary in a per-platform package
(``@anthropic-ai/claude-code-linux-x64`` and so on); its ``install.cjs`` postinstall only
links it, and npm may not run install scripts, so we call the platform binary directly.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

__all__ = ["DEFAULT_CACHE", "PACKAGE", "ClaudeCodeNotFound", "environment", "find_binary", "install"]

PACKAGE = "@anthropic-ai/claude-code"
DEFAULT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trio-balancer" / "claude-code"
)


class ClaudeCodeNotFound(Exception):
    """No Claude Code CLI on PATH or in the cache; ``install()`` or ``npm i -g`` one."""


def _platform_packages() -> list[str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    system = platform.system().lower()
    if system == "linux":
        return [f"claude-code-linux-{arch}", f"claude-code-linux-{arch}-musl"]
    if system == "darwin":
        return [f"claude-code-darwin-{arch}"]
    return [f"claude-code-win32-{arch}"]


def find_binary(cache: Path | None = None) -> Path:
    """The Claude Code executable: from the cache's platform package, else ``claude`` on PATH."""
    root = (cache or DEFAULT_CACHE) / "node_modules" / "@anthropic-ai"
    for package in _platform_packages():
        candidate = root / package / ("claude.exe" if os.name == "nt" else "claude")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("claude")
    if on_path:
        return Path(on_path)
    raise ClaudeCodeNotFound(f"no Claude Code CLI in {cache or DEFAULT_CACHE} or on PATH")


def install(cache: Path | None = None, *, timeout: float = 600.0) -> Path:
    """``npm install`` the CLI into ``cache`` (once) and return its binary."""
    cache = cache or DEFAULT_CACHE
    try:
        return find_binary(cache)
    except ClaudeCodeNotFound:
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise ClaudeCodeNotFound("npm is not installed; install Node.js, or Claude Code itself")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), PACKAGE],
        check=True, capture_output=True, timeout=timeout,
    )  # fmt: skip
    return find_binary(cache)


def environment(
    base_url: str, *, api_key: str | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment for a Claude Code process that talks to the balancer at ``base_url``."""
    env = dict(os.environ if base is None else base)
    env["ANTHROPIC_BASE_URL"] = base_url
    if api_key is not None:
        env["ANTHROPIC_API_KEY"] = api_key
    return env
