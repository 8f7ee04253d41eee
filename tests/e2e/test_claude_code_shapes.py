"""Today's Claude Code, captured live, replayed to every provider preset like the committed matrix.

The CLI from the npm registry (installed into the checkout's ``.cache/claude-code``, as
``test_claude_code.py`` does) runs the capture scenarios (``capture.py``) through the balancer;
each distinct request shape it sent is then replayed to one provider of each preset behind the
strict fakes of ``tests/matrix.py``. A shape Claude Code starts sending on the day it ships is
exercised here before anyone commits a fixture for it.

What is new compared with the committed fixtures (body keys, beta flags, block types, thinking
and cache_control shapes) is reported in the assertion message, and does not fail by itself:
a new flag or field is only a problem where a provider would refuse it, and the replay is what
finds that (the strict older-Anthropic fake rejects every top-level key it does not know, so a
new body field the balancer fails to remove fails the ``anthropic-compatible`` cell). Refresh
the fixtures with ``python -m tests.e2e.capture --cli PATH`` when this reports something new.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ..fakes import FakeUpstream
from ..helpers import BalancerFactory
from ..matrix import FIXTURES, provider_row, replay
from ..matrix import MATRIX_PRESETS as PRESETS  # the kind presets are tested in test_clouds
from .capture import Capture, capture_cli, cli_command, distinct, features_of, load_fixtures


def novelty(capture: Capture) -> str:
    """What the live requests use that no committed fixture does, one line per kind."""
    known: set[str] = set()
    for _, fixture in load_fixtures(FIXTURES):
        known |= features_of(fixture)
    new: dict[str, set[str]] = {}
    for request in capture.requests:
        for feature in features_of(request.as_json()) - known:
            kind, _, value = feature.partition(":")
            new.setdefault(kind, set()).add(value)
    if not new:
        return f"Claude Code {capture.cli_version}: nothing new compared with the committed fixtures"
    lines = [f"  {kind}: {', '.join(sorted(values))}" for kind, values in sorted(new.items())]
    return f"Claude Code {capture.cli_version} sends what no committed fixture has:\n" + "\n".join(lines)


async def test_current_cli_shapes_through_every_preset(
    claude_bin: Path, nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    capture = await capture_cli(cli_command(claude_bin))
    report = novelty(capture)
    print(report)  # shown with -s or -rP even when every cell passes
    shapes = [c.as_json() for c in distinct(capture.requests)]
    assert shapes, f"the CLI sent nothing through the balancer: {capture.outputs}"
    failures: list[str] = []
    for preset in PRESETS:  # one balancer and one strict fake per preset, for every shape
        upstream = await FakeUpstream().start(nursery)
        b = await balancer_for(config={"providers": [provider_row(preset, upstream.url)]})
        for n, fixture in enumerate(shapes):
            try:
                await replay(fixture, preset, upstream, b)
            except AssertionError as exc:
                failures.append(f"{fixture['scenario']}#{n} ({fixture['note']}) -> {preset}: {exc}")
    assert not failures, "\n".join([*failures, "", report])
