"""Capture the real Claude Code CLI's requests through the balancer, as scrubbed fixtures.

``python -m tests.e2e.capture --cli PATH --out tests/data/claude_code`` runs the CLI at PATH
(a native binary, or a ``cli.js`` run with node) headless with a throwaway HOME, against the
balancer in front of a scripted Anthropic fake, over scenarios that make it send its different
shapes (a plain prompt, a tool loop, thinking, effort, a continued conversation, and whatever
background calls the version makes on its own). Each distinct request shape is written as
``<out>/<cli_version>/<scenario>-<n>.json``; the big values (system prompt, tool list) are
stored once per version under ``shared/`` and referenced as ``{"$shared": NAME}``.

The fake decides by what a request holds, never by its order: background calls (titles,
topics, quota checks, count_tokens) come when the version pleases. The e2e tests import
:func:`capture_cli` to replay today's CLI's requests live (``test_claude_code_shapes.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_balancer.config import parse_config
from trio_balancer.tools.claude_code import environment

from ..fakes import JSON_HEADERS, FakeUpstream, Received, Reply, anthropic_message, anthropic_text_events, sse
from ..helpers import CLIENT_KEY, PROVIDER_KEY, start_balancer

__all__ = [
    "CACHE",
    "SCENARIOS",
    "SECRET",
    "SUBAGENT",
    "Capture",
    "Captured",
    "Scenario",
    "Scrubber",
    "capture_cli",
    "classify",
    "cli_command",
    "cli_env",
    "cli_version",
    "distinct",
    "features_of",
    "load_fixtures",
    "run_cli",
    "shape_of",
    "write_fixtures",
]

SECRET = "PURPLE-ELEPHANT-4242"
# Where the e2e suite installs the CLI from npm (kept between runs; see conftest.py).
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "claude-code"
HOME_PLACEHOLDER = "/HOME"
WORK_PLACEHOLDER = "/WORKDIR"
TMP_PLACEHOLDER = "/TMP"
SIGNATURE = "Eq0BCkYIBxgCKkDcapturefixturesignature0000000000000000000000000000000000000000000000000000=="
# Headers kept in a fixture: what shapes a request, nothing that authenticates it.
KEPT_HEADERS = (
    "anthropic-beta",
    "anthropic-version",
    "anthropic-dangerous-direct-browser-access",
    "content-type",
    "user-agent",
    "x-app",
    "x-claude-code-session-id",
    "x-claude-code-agent-id",  # 2.1.x: a subagent's requests (its own random id)
    "x-claude-code-parent-agent-id",  # 2.1.x: a subagent started by a subagent
)
SHARED_MIN_CHARS = 4000  # a top-level body value this big is stored once per version


@attrs.frozen
class Scenario:
    """One CLI run (or several in the same HOME, for ``--continue``) and the tools it answers with.

    ``tools`` is the tool calls the fake makes in turn on the main conversation (each after the
    previous one's result came back), then it answers in text.
    """

    name: str
    prompts: tuple[tuple[str, ...], ...]  # each run's arguments after the binary
    tools: tuple[tuple[str, dict[str, Any]], ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)


def _read(work: str) -> tuple[str, dict[str, Any]]:
    return ("Read", {"file_path": f"{work}/notes.txt"})


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("plain", (("-p", "say hello", "--max-turns", "1"),)),
    Scenario(
        "tools",
        (("-p", "What is the launch code in notes.txt?", "--max-turns", "4", "--allowedTools", "Read,Bash"),),
        tools=(_read("{work}"), ("Bash", {"command": "wc -c notes.txt", "description": "Count bytes"})),
    ),
    Scenario(
        "thinking",
        (
            (
                "-p",
                "Think, then read notes.txt and tell me the code.",
                "--max-turns",
                "3",
                "--allowedTools",
                "Read",
            ),
        ),
        tools=(_read("{work}"),),
        env={"MAX_THINKING_TOKENS": "4096"},
    ),
    Scenario("effort", (("-p", "say hello", "--max-turns", "1"),), env={"CLAUDE_CODE_EFFORT_LEVEL": "high"}),
    Scenario(
        "continue",
        (("-p", "say hello", "--max-turns", "1"), ("-c", "-p", "and once more", "--max-turns", "1")),
    ),
)


# The main conversation asks for a subagent (``Agent`` in 2.1.x, ``Task`` before); the fake
# answers the subagent's own requests, found by this marker in its prompt, in text.
SUBAGENT_MARK = "SUBAGENT-TASK-7731"
SUBAGENT = Scenario(
    "subagent",
    (("-p", "Use a subagent to read notes.txt and tell me the code.", "--max-turns", "3"),),
    tools=(
        (
            "Agent",
            {
                "description": "Read the notes",
                "prompt": f"{SUBAGENT_MARK}: read notes.txt and report the launch code.",
                "subagent_type": "general-purpose",
            },
        ),
    ),
)
EXTRA_SCENARIOS: tuple[Scenario, ...] = (SUBAGENT,)  # run on request (``--scenario subagent``)


@attrs.frozen
class Captured:
    """One request the CLI sent, scrubbed: the fixture's content."""

    cli_version: str
    scenario: str
    path: str
    headers: dict[str, str]
    body: Any
    note: str

    def as_json(self) -> dict[str, Any]:
        return {
            "cli_version": self.cli_version,
            "scenario": self.scenario,
            "note": self.note,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
        }


# -- the fake's answers, decided by content -----------------------------------------------------


def _thinking_events(index: int) -> list[bytes]:
    start = {"type": "thinking", "thinking": "", "signature": ""}
    return [
        sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
        sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                    "delta": {"type": "thinking_delta", "thinking": "The user wants the file read."}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                    "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]  # fmt: skip


def _assistant_stream(
    *, thinking: bool, tool: tuple[str, str, dict[str, Any]] | None, text: str, turn: int
) -> list[bytes]:
    """One assistant turn: [signed thinking], text, [a tool call]; ``turn`` keeps message ids
    apart (the CLI merges blocks of one id into one message)."""
    message = {"id": f"msg_capture_{turn}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 900, "output_tokens": 1}}  # fmt: skip
    events = [sse("message_start", {"type": "message_start", "message": message})]
    index = 0
    if thinking:
        events += _thinking_events(index)
        index += 1
    events += [
        sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]  # fmt: skip
    if tool is not None:
        index += 1
        tool_id, name, tool_input = tool
        block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        raw = json.dumps(tool_input)
        events += [
            sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}),
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": raw}}),
            sse("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]  # fmt: skip
    stop = "tool_use" if tool is not None else "end_turn"
    events += [
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                              "usage": {"output_tokens": 30}}),
        sse("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return events


def _answered_calls(body: Mapping[str, Any]) -> int:
    """How many of our tool calls the conversation already holds a result for."""
    count = 0
    for message in body.get("messages") or []:
        if isinstance(message.get("content"), list):
            count += sum(
                1
                for block in message["content"]
                if isinstance(block, dict)
                and block.get("type") == "tool_result"
                and str(block.get("tool_use_id", "")).startswith("toolu_capture_")
            )
    return count


def _is_warmup(body: Mapping[str, Any]) -> bool:
    """A subagent's warmup call (2.0.x sends one per agent type, prompt "Warmup")."""
    messages = body.get("messages") or []
    if len(messages) != 1:
        return False
    content = messages[0].get("content")
    texts = (
        [content]
        if isinstance(content, str)
        else [b.get("text") for b in content or [] if isinstance(b, dict)]
    )
    return texts[-1:] == ["Warmup"]


def _is_main_turn(body: Mapping[str, Any]) -> bool:
    """The conversation itself (with the coding tools), not a background call or a warmup."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    return any(t.get("name") == "Read" for t in tools) and not _is_warmup(body)


def _is_capture_subagent(body: Mapping[str, Any]) -> bool:
    """A request of the subagent the ``subagent`` scenario starts: its first message is the
    prompt the fake gave it (the parent's history holds the mark only in a ``tool_use`` input)."""
    messages = body.get("messages") or []
    first = messages[0].get("content") if messages and isinstance(messages[0], dict) else None
    texts = (
        [first]
        if isinstance(first, str)
        else [b.get("text") or "" for b in first or [] if isinstance(b, dict)]
    )
    return any(SUBAGENT_MARK in t for t in texts)


def _has_tool(body: Mapping[str, Any], name: str) -> bool:
    return any(isinstance(t, dict) and t.get("name") == name for t in body.get("tools") or [])


def _wants_thinking(body: Mapping[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def classify(r: Received) -> str:
    """What a request is, for the fixture's note and the fake's answer."""
    if "count_tokens" in r.target:
        return "count_tokens"
    if r.method != "POST":
        return f"{r.method} {r.target}"
    body = r.json()
    if _is_warmup(body):
        return "subagent warmup"
    if _is_capture_subagent(body):
        return "subagent turn"
    if not _is_main_turn(body):
        return "background call (no coding tools)"
    answered = _answered_calls(body)
    return "main turn" if answered == 0 else f"main turn after {answered} tool result(s)"


def script_for(scenario: Scenario, work: str) -> Callable[[Received], Reply]:
    """The fake's script for ``scenario``: by content, so background calls may come in any order."""
    calls = [(name, json.loads(json.dumps(args).replace("{work}", work))) for name, args in scenario.tools]

    def script(r: Received) -> Reply:
        if "count_tokens" in r.target:
            return Reply(headers=list(JSON_HEADERS), steps=[b'{"input_tokens": 4242}'])
        if r.method != "POST" or "/v1/messages" not in r.target:
            return Reply(
                status=404,
                headers=list(JSON_HEADERS),
                steps=[b'{"type":"error","error":{"type":"not_found_error","message":"no"}}'],
            )
        body = r.json()
        main = _is_main_turn(body) and not _is_capture_subagent(body)
        if not main:
            text = (
                '{"isNewTopic": false, "title": null}'
                if "isNewTopic" in r.body.decode(errors="replace")
                else "Greeting"
            )
        else:
            text = f"The file says the code is {SECRET}."
        if not body.get("stream"):
            return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message(text)).encode()])
        if not main:
            return Reply(steps=anthropic_text_events([text]))
        done = _answered_calls(body)
        tool = None
        if done < len(calls):
            name, args = calls[done]
            if name == "Agent" and not _has_tool(body, "Agent"):
                name = "Task"  # the subagent tool's name before 2.1
            tool, text = (f"toolu_capture_{done + 1}", name, args), "Let me look."
        return Reply(steps=_assistant_stream(thinking=_wants_thinking(body), tool=tool, text=text, turn=done))

    return script


# -- scrubbing ----------------------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@attrs.define
class Scrubber:
    """Replaces what is secret or per-run in a request by stable placeholders.

    Paths of the throwaway HOME and working directory become ``/HOME`` and ``/WORKDIR``; each
    distinct UUID (session, device, account ids) becomes ``00000000-0000-4000-8000-<n>`` and each
    64-hex id (the user hash) a numbered stand-in, the same one for the same value across a
    capture, so a session's requests still share their id. The billing block's ``cch=`` is kept.
    """

    paths: list[tuple[str, str]]
    ids: dict[str, str] = attrs.Factory(dict)

    def text(self, value: str) -> str:
        for real, placeholder in self.paths:
            value = value.replace(real, placeholder)
        value = value.replace(CLIENT_KEY, "sk-ant-CLIENT-KEY").replace(PROVIDER_KEY, "sk-PROVIDER-KEY")
        value = _UUID.sub(lambda m: self._id(m.group(0), "uuid"), value)
        return _HEX64.sub(lambda m: self._id(m.group(0), "hex"), value)

    def _id(self, real: str, kind: str) -> str:
        if real not in self.ids:
            n = len(self.ids) + 1
            self.ids[real] = f"00000000-0000-4000-8000-{n:012d}" if kind == "uuid" else f"{n:064d}"
        return self.ids[real]

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        return value


def scrubbed(r: Received, scrubber: Scrubber, *, cli_version: str, scenario: str) -> Captured:
    headers = {n: scrubber.text(r.header(n) or "") for n in KEPT_HEADERS if r.header(n) is not None}
    try:
        body: Any = scrubber.value(json.loads(r.body)) if r.body else None
    except ValueError:
        body = scrubber.text(r.body.decode(errors="replace"))
    return Captured(cli_version, scenario, r.target, headers, body, classify(r))


# -- running the CLI ----------------------------------------------------------------------------


def cli_command(cli: Path) -> list[str]:
    """How to run ``cli``: a ``.js`` entry point (the 1.x and 2.0 packages) through node."""
    cli = cli.resolve()  # the CLI runs in a scratch working directory
    return ["node", str(cli)] if cli.suffix in (".js", ".cjs", ".mjs") else [str(cli)]


def cli_version(command: Sequence[str]) -> str:
    out = subprocess.run([*command, "--version"], capture_output=True, timeout=60, check=True, text=True)
    match = re.search(r"\d+\.\d+\.\d+", out.stdout)
    if match is None:
        raise RuntimeError(f"no version in {out.stdout!r}")
    return match.group(0)


def cli_env(url: str, home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = environment(url, api_key=CLIENT_KEY)
    for name in list(env):
        if name.startswith(("ANTHROPIC_", "CLAUDE_")) and name not in (
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_API_KEY",
        ):
            env.pop(name)
    env.update(
        HOME=str(home),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",  # no telemetry or update checks off this machine
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        **extra,
    )
    return env


async def run_cli(
    command: Sequence[str], args: Sequence[str], work: Path, env: dict[str, str], limit: float
) -> str:
    with trio.fail_after(limit):
        result = await trio.run_process(
            [*command, *args], cwd=work, env=env, capture_stdout=True, capture_stderr=True,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(
            f"{command} {args} exited {result.returncode}: {out}\n{result.stderr.decode()[-2000:]}"
        )
    return out.strip()


def _placeholders(work: Path, home: Path, root: Path) -> list[tuple[str, str]]:
    """Each per-run path and its stand-in, also in the dashed form Claude Code names project
    folders by (``~/.claude/projects/-tmp-...-work``), longest first."""
    pairs = [(str(work), WORK_PLACEHOLDER), (str(home), HOME_PLACEHOLDER), (str(root), TMP_PLACEHOLDER)]
    # 2.1.x keeps a background agent's transcript under its own per-user temporary folder
    pairs.append((f"{tempfile.gettempdir()}/claude-{os.getuid()}", f"{TMP_PLACEHOLDER}/claude"))
    pairs += [(re.sub(r"[^A-Za-z0-9]", "-", real), stand_in.replace("/", "-")) for real, stand_in in pairs]
    return sorted(pairs, key=lambda p: -len(p[0]))


@attrs.frozen
class Capture:
    """One capture: the version, the scrubbed requests, and what the CLI printed per scenario."""

    cli_version: str
    requests: list[Captured]
    outputs: dict[str, list[str]]


async def capture_cli(
    command: Sequence[str], scenarios: Iterable[Scenario] = SCENARIOS, *, limit: float = 120.0
) -> Capture:
    """Run ``command`` (the CLI) over ``scenarios`` through a balancer; every request it sent."""
    version = cli_version(command)
    requests: list[Captured] = []
    outputs: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="cc-capture-") as tmp:
        root = Path(tmp).resolve()
        async with trio.open_nursery() as nursery:
            upstream = await FakeUpstream().start(nursery)
            config = {"dedup": {"enabled": False}, "providers": [{"name": "anthropic", "kind": "anthropic", "base_url": upstream.url,
                                     "api_key": PROVIDER_KEY}]}  # fmt: skip
            balancer = await start_balancer(nursery, parse_config(config))
            try:
                for scenario in scenarios:
                    home, work = root / scenario.name / "home", root / scenario.name / "work"
                    home.mkdir(parents=True)
                    work.mkdir()
                    (work / "notes.txt").write_text(f"The launch code is {SECRET}.\n")
                    upstream.script(script_for(scenario, str(work)))
                    scrubber = Scrubber(_placeholders(work, home, root))
                    first = len(upstream.received)
                    env = cli_env(balancer.url, home, scenario.env)
                    outputs[scenario.name] = [
                        await run_cli(command, args, work, env, limit) for args in scenario.prompts
                    ]
                    await balancer.wait_idle()
                    requests += [
                        scrubbed(r, scrubber, cli_version=version, scenario=scenario.name)
                        for r in upstream.received[first:]
                    ]
            finally:
                await balancer.client.aclose()
                nursery.cancel_scope.cancel()
    return Capture(version, requests, outputs)


# -- shapes and fixtures ------------------------------------------------------------------------


def _block_shape(block: Any) -> Any:
    if not isinstance(block, dict):
        return type(block).__name__
    shape: dict[str, Any] = {"type": block.get("type"), "keys": sorted(block)}
    if "cache_control" in block:
        shape["cache_control"] = block["cache_control"]
    if isinstance(block.get("content"), list):
        shape["content"] = [_block_shape(b) for b in block["content"]]
    return shape


def shape_of(path: str, headers: Mapping[str, str], body: Any) -> str:
    """A request's shape, without its text: equal shapes are one fixture.

    Path, beta flags, top-level keys, the thinking / output_config / context_management values,
    the system blocks' and each message's role, block types, keys and cache_control, and the
    tool names (a different tool list is a different shape).
    """
    if not isinstance(body, dict):
        return json.dumps([path.split("?")[0], type(body).__name__])
    messages = [
        [
            m.get("role"),
            [_block_shape(b) for b in m["content"]] if isinstance(m.get("content"), list) else "str",
        ]
        for m in body.get("messages") or []
    ]
    system = body.get("system")
    shape = {
        "path": path.split("?")[0],
        "betas": sorted(f.strip() for f in headers.get("anthropic-beta", "").split(",") if f.strip()),
        "keys": sorted(body),
        "thinking": body.get("thinking"),
        "output_config": body.get("output_config"),
        "context_management": body.get("context_management"),
        "system": [_block_shape(b) for b in system] if isinstance(system, list) else type(system).__name__,
        "messages": messages,
        "tools": [t.get("name") or t.get("type") for t in body.get("tools") or [] if isinstance(t, dict)],
    }
    return json.dumps(shape, sort_keys=True)


def distinct(requests: Iterable[Captured]) -> list[Captured]:
    """The first request of each shape, in capture order."""
    seen: set[str] = set()
    kept: list[Captured] = []
    for c in requests:
        key = shape_of(c.path, c.headers, c.body)
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept


def _share(body: Any, shared: dict[str, Any]) -> Any:
    """``body`` with its big top-level values (system, tools) replaced by ``{"$shared": NAME}``."""
    if not isinstance(body, dict):
        return body
    out = {}
    for key, value in body.items():
        raw = json.dumps(value, sort_keys=True, ensure_ascii=False)
        if key in ("system", "tools") and len(raw) >= SHARED_MIN_CHARS:
            name = f"{key}-{hashlib.sha256(raw.encode()).hexdigest()[:10]}"
            shared[name] = value
            out[key] = {"$shared": name}
        else:
            out[key] = value
    return out


def write_fixtures(capture: Capture, out: Path) -> list[Path]:
    """Write each distinct shape as ``out/<version>/<scenario>-<n>.json``; the paths written."""
    folder = out / capture.cli_version
    shared_dir = folder / "shared"
    shared_dir.mkdir(parents=True, exist_ok=True)
    captured = {c.scenario for c in capture.requests}
    for old in folder.glob("*.json"):  # a capture of some scenarios leaves the others' files
        if old.stem.rsplit("-", 1)[0] in captured:
            old.unlink()
    shared: dict[str, Any] = {}
    written: list[Path] = []
    counts: dict[str, int] = {}
    for c in distinct(capture.requests):
        counts[c.scenario] = counts.get(c.scenario, 0) + 1
        path = folder / f"{c.scenario}-{counts[c.scenario]}.json"
        data = c.as_json()
        data["body"] = _share(c.body, shared)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    for name, value in shared.items():
        (shared_dir / f"{name}.json").write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")
    used = set(re.findall(r'"\$shared": "([^"]+)"', "".join(f.read_text() for f in folder.glob("*.json"))))
    for old in shared_dir.glob("*.json"):
        if old.stem not in used:
            old.unlink()
    return written


def _resolve(body: Any, shared_dir: Path) -> Any:
    if not isinstance(body, dict):
        return body
    return {
        k: json.loads((shared_dir / f"{v['$shared']}.json").read_text())
        if isinstance(v, dict) and set(v) == {"$shared"}
        else v
        for k, v in body.items()
    }


def load_fixtures(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every fixture under ``root`` (``<version>/*.json`` and ``synthetic-*.json``), resolved:
    pairs of (an id like ``2.1.332/plain-1``, the fixture with its full body)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(root.glob("*.json")) + sorted(root.glob("*/*.json")):
        data = json.loads(path.read_text())
        data["body"] = _resolve(data["body"], path.parent / "shared")
        found.append((str(path.relative_to(root).with_suffix("")), data))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.capture", description=__doc__.split("\n")[0])
    parser.add_argument("--cli", type=Path, required=True, help="the claude binary, or a cli.js")
    parser.add_argument("--out", type=Path, default=Path("tests/data/claude_code"))
    parser.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    chosen += [s for s in EXTRA_SCENARIOS if args.scenario and s.name in args.scenario]
    capture = trio.run(capture_cli, cli_command(args.cli), chosen)
    for name, outs in capture.outputs.items():
        print(f"{name}: {outs}", file=sys.stderr)
    for path in write_fixtures(capture, args.out):
        size = path.stat().st_size
        print(f"{path} ({size} bytes){'  [> 200 KB]' if size > 200_000 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- what a request uses, for the README and for spotting new shapes ----------------------------


def _blocks(body: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    system = body.get("system")
    if isinstance(system, list):
        yield from (b for b in system if isinstance(b, dict))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict):
                yield block
                inner = block.get("content")
                yield from (b for b in inner if isinstance(b, dict)) if isinstance(inner, list) else ()


def features_of(fixture: Mapping[str, Any]) -> set[str]:
    """What a fixture's request uses, as ``kind:value`` strings (``beta:…``, ``key:…``,
    ``block:…``, ``role:…``, ``cache_control:…``, ``thinking:…``, ``output_config:…``,
    ``context_management:…``, ``billing:…``, ``tool:…`` for typed server tools)."""
    found = {f"path:{fixture['path'].split('?')[0]}"}
    headers = fixture.get("headers") or {}
    found |= {f"beta:{f.strip()}" for f in headers.get("anthropic-beta", "").split(",") if f.strip()}
    found |= {f"header:{n}" for n in headers}
    body = fixture.get("body")
    if not isinstance(body, dict):
        return found
    found |= {f"key:{k}" for k in body}
    found |= {f"role:{m.get('role')}" for m in body.get("messages") or [] if isinstance(m, dict)}
    if isinstance(body.get("system"), str):
        found.add("system:string")
    for block in _blocks(body):
        if block.get("type") is not None:
            found.add(f"block:{block.get('type')}")
        control = block.get("cache_control")
        if isinstance(control, dict):
            found |= {f"cache_control:{k}={v}" for k, v in control.items()}
        text = block.get("text")
        if isinstance(text, str) and text.startswith("x-anthropic-billing-header"):
            found.add("billing:cch" if "cch=" in text else "billing:no-cch")
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        found |= {f"thinking:{k}={v}" for k, v in thinking.items() if k != "budget_tokens"}
        found |= {"thinking:budget_tokens"} if "budget_tokens" in thinking else set()
    for key in ("output_config", "context_management"):
        value = body.get(key)
        if isinstance(value, dict):
            found |= {f"{key}:{k}" for k in value}
            for edit in value.get("edits") or []:
                found.add(f"{key}:edit={edit.get('type')}")
    found |= {f"tool:{t['type']}" for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type")}
    return found
