"""The real Claude Code CLI through each cloud family's simulator dialect: a whole tool round trip.

The simulator (``x-sim-tool-loop``) calls Claude Code's ``Read`` tool on the conversation turn
that offers it and answers the turn carrying its result with text quoting that result, so the
CLI's final answer holds the file's secret only if the call, the tool's run and the result all
crossed the family's wire format both ways: Bedrock's signed event streams, Vertex's
token-authorised Anthropic stream, Gemini's converted ``generateContent`` stream.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_balancer.tools import simulator
from trio_balancer.tools.sim_bedrock import SIM_AWS_KEY_ID, SIM_AWS_SECRET
from trio_balancer.tools.sim_vertex import make_service_account

from ..helpers import BalancerFactory
from .capture import SECRET
from .test_claude_code import run_claude, workdir  # noqa: F401  (the fixture)

GEMINI_KEY = "AIzaSy-sim-gemini-key-e2e-000000000000"


def sim_headers(notes: Path) -> dict[str, str]:
    return {
        "x-sim-tool-loop": "1",
        "x-sim-tools": "1",
        "x-sim-tool-name": "Read",
        "x-sim-tool-input": json.dumps({"file_path": str(notes)}),
        "x-sim-eps": "0",
        "x-sim-events": "3",
    }


def provider_row(kind: str, url: str, account: Path, headers: dict[str, str]) -> dict[str, Any]:
    base = {"name": kind, "kind": kind, "base_url": url, "headers": headers}
    if kind == "bedrock":
        return {**base, "region": "us-east-1"}
    if kind == "vertex":
        return {**base, "project": "sim-project", "region": "us-east5", "service_account_file": str(account)}
    return {**base, "api_key": GEMINI_KEY}


@pytest.mark.parametrize("kind", ["bedrock", "vertex", "gemini"])
async def test_a_tool_round_trip_through_each_cloud(
    claude_bin: Path,
    workdir: Path,  # noqa: F811
    balancer_for: BalancerFactory,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kind: str,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SIM_AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SIM_AWS_SECRET)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    sim = simulator.Simulator(gemini_keys=[GEMINI_KEY])
    port = await nursery.start(partial(simulator.serve, sim))
    url = f"http://127.0.0.1:{port}"
    account = tmp_path / "account.json"
    email, public = make_service_account(account, f"{url}/token")
    sim.google_keys[email] = public
    row = provider_row(kind, url, account, sim_headers(workdir / "notes.txt"))
    config: dict[str, Any] = {"providers": [row]}
    if kind == "gemini":  # Claude Code asks for Claude models: the route names Gemini's
        config["routes"] = [{"match": "*", "targets": [{"provider": "gemini", "model": "gemini-2.5-flash"}]}]
    b = await balancer_for(config=config)
    out = await run_claude(
        claude_bin, b.url, workdir, "What is the launch code in notes.txt?",
        "--max-turns", "3", "--allowedTools", "Read",
    )  # fmt: skip
    assert SECRET in out, out
    rows = await b.ledger_rows(2)
    assert {r["provider"] for r in rows} == {kind}
    assert all(r["status"] == 200 for r in rows), rows
