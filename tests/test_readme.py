"""The README's two set-up commands are the ones CI and users actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    head = (ROOT / "README.md").read_text().split("---", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", head)


def test_readme_starts_with_exactly_two_commands() -> None:
    run, test = setup_commands()
    assert "trio-balancer serve" in run
    assert "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    _, test = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci
