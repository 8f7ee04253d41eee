"""The compatibility matrix: every Claude Code request shape we keep, against every provider preset.

The fixtures under ``tests/data/claude_code/`` are real requests captured from the CLI through
the balancer (``tests/e2e/capture.py``; one folder per CLI version) plus ``synthetic-*.json``
for shapes the CLI does not send headless here. Each cell replays one through the balancer to
one provider of one preset (``tests/matrix.py`` says what each cell must hold).
``python -m tests.test_compat_matrix`` prints the table kept in the fixtures' README.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from trio_balancer.config import parse_config
from trio_balancer.protocol.features import needs_of
from trio_balancer.upstream.fit import fit_request
from trio_balancer.upstream.request import UpstreamRequest

from .e2e.capture import Scrubber, load_fixtures
from .fakes import FakeUpstream
from .helpers import CLIENT_KEY, PROVIDER_KEY, BalancerFactory
from .matrix import (
    FIXTURES,
    MATRIX_PRESETS,
    matrix_table,
    provider_row,
    replay,
    wire_body,
)


def _cells() -> list[Any]:
    return [
        pytest.param(fixture, preset, id=f"{fixture_id}-{preset}")
        for fixture_id, fixture in load_fixtures(FIXTURES)
        for preset in MATRIX_PRESETS
    ]


@pytest.mark.parametrize(("fixture", "preset"), _cells())
async def test_cell(
    fixture: dict[str, Any], preset: str, upstream: FakeUpstream, balancer_for: BalancerFactory
) -> None:
    """One cell: ``fixture`` replayed to a provider of ``preset``."""
    b = await balancer_for(config={"providers": [provider_row(preset, upstream.url)]})
    await replay(fixture, preset, upstream, b)


def test_deferred_tool_field_goes_with_its_beta() -> None:
    """Never the flag gone and the field kept: ``tools[].defer_loading`` belongs to its beta."""

    fixture = dict(load_fixtures(FIXTURES))["2.1.332/plain-1"]
    body = fixture["body"]
    assert any(t.get("defer_loading") for t in body["tools"])
    headers = tuple((k.encode(), v.encode()) for k, v in fixture["headers"].items())
    raw = wire_body(fixture)
    request = UpstreamRequest(
        path="/v1/messages", query=b"", headers=headers, body=raw, payload=body,
        model=body["model"], stream=True, needs=needs_of(body),
    )  # fmt: skip
    provider = parse_config({"providers": [provider_row("anthropic-compatible", "http://127.0.0.1:1")]})
    fitted = fit_request(provider.providers[0], request, body["model"])
    betas = dict(fitted.headers).get(b"anthropic-beta", b"").decode()
    assert "advanced-tool-use-2025-11-20" not in betas
    assert not any("defer_loading" in t for t in json.loads(fitted.body)["tools"])


def test_fixtures_are_scrubbed_and_small() -> None:
    """No key, no throwaway path, no real id in what is committed; no file over ~200 KB."""
    for path in FIXTURES.rglob("*.json"):
        text = path.read_text()
        assert len(text) < 200_000, f"{path} is {len(text)} bytes"
        for secret in (CLIENT_KEY, PROVIDER_KEY, "/tmp/", "cc-capture"):
            assert secret not in text, f"{secret!r} in {path}"
        ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text))
        assert all(i.startswith("00000000-0000-4000-8000-") for i in ids), f"a real id in {path}: {ids}"


def test_scrubber_keeps_one_stand_in_per_value() -> None:
    session, other = "7d2f64a9-3c1e-4b8a-9f00-1234567890ab", "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
    scrubber = Scrubber([("/tmp/x/work", "/WORKDIR")])
    body = {
        "metadata": {"user_id": f"user_{'ab' * 32}_session_{session}"},
        "text": f"in /tmp/x/work {session} {other}",
    }
    out = scrubber.value(body)
    assert (
        out["text"] == "in /WORKDIR 00000000-0000-4000-8000-000000000001 00000000-0000-4000-8000-000000000003"
    )
    assert out["metadata"]["user_id"] == f"user_{2:064d}_session_00000000-0000-4000-8000-000000000001"


if __name__ == "__main__":
    print(matrix_table())
