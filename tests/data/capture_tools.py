"""Capture the real Claude Code tool list into ``claude_code_tools.json``, next to this file.

Runs the CLI headless once through the balancer against a fake Anthropic upstream that records
what it is sent, and keeps the ``tools`` of the request that carried the most of them. Usage,
from the checkout: ``python -m tests.data.capture_tools [CACHE]`` (CACHE: where the CLI is
npm-installed, default ``.cache/claude-code``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from trio_balancer.config import parse_config
from trio_balancer.tools.claude_code import environment, install

from ..fakes import FakeUpstream, Reply, anthropic_text_events
from ..helpers import CLIENT_KEY, provider_config, start_balancer

HERE = Path(__file__).resolve().parent


async def capture(binary: Path, scratch: Path) -> list[dict[str, object]]:
    async with trio.open_nursery() as nursery:
        upstream = await FakeUpstream(lambda r: Reply(steps=anthropic_text_events(["hi"]))).start(nursery)
        balancer = await start_balancer(nursery, parse_config(provider_config(upstream)))
        env = environment(balancer.url, api_key=CLIENT_KEY)
        env.update(HOME=str(scratch), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
        with trio.fail_after(120):
            await trio.run_process([str(binary), "-p", "say hi", "--max-turns", "1"], cwd=scratch,
                                   env=env, capture_stdout=True, stdin=subprocess.DEVNULL)  # fmt: skip
        nursery.cancel_scope.cancel()
    return max((r.json().get("tools") or [] for r in upstream.received), key=len)


def main() -> None:
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / ".cache" / "claude-code"
    binary = install(cache)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    scratch = Path(tempfile.mkdtemp(prefix="cc-capture-"))
    os.environ["HOME"] = str(scratch)  # the ledger lives under ~: keep this run's out of yours
    tools = trio.run(capture, binary, scratch)
    out = {"cli_version": version.split()[0], "tools": tools}
    (HERE / "claude_code_tools.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(tools)} tools from Claude Code {out['cli_version']}")


if __name__ == "__main__":
    main()
