"""The compatibility matrix's machinery: strict fakes per provider preset, replaying one fixture.

Shared by ``tests/test_compat_matrix.py`` (the committed fixtures) and
``tests/e2e/test_claude_code_shapes.py`` (today's CLI, captured live). A cell is one request
shape sent through the balancer to one provider of one preset in ``config/capabilities.py``,
behind a fake as strict as that kind of server:

- ``anthropic``: the provider gets the client's bytes, byte for byte, and its beta flags;
- ``anthropic-compatible``: what reaches it passes ``old_anthropic_rejection``;
- the OpenAI-format presets: what reaches them passes ``openai_rejection`` with the flags the
  preset implies (file parts, Gemini's schema subset, reasoning_content on tool-call turns);
- a request the provider cannot take as sent (a server tool, MCP servers, a PDF it cannot
  read) is not sent at all: the client gets a 400 naming what it needs.

Every other cell's client gets a 200 and the fake's answer. ``cell_outcome`` says in a few
words what the balancer does in a cell (the table in ``tests/data/claude_code/README.md``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trio_balancer.config import Capabilities, parse_config
from trio_balancer.config.capabilities import KIND_PRESETS, PRESETS
from trio_balancer.protocol.features import needs_of
from trio_balancer.upstream.fit import fit_request
from trio_balancer.upstream.request import UpstreamRequest

from .e2e.capture import load_fixtures
from .fakes import (
    JSON_HEADERS,
    SSE_HEADERS,
    FakeUpstream,
    Received,
    Reply,
    _schema_rejection,
    anthropic_message,
    anthropic_text_events,
    error_reply,
    old_anthropic_rejection,
    openai_rejection,
    openai_text_stream,
)
from .helpers import NO_DEDUP, PROVIDER_KEY, Balancer

FIXTURES = Path(__file__).parent / "data" / "claude_code"
ANSWER = "Matrix answer."
OPENAI_PRESETS = ("openai-compatible", "openai", "deepseek", "kimi", "gemini-openai")
# Bedrock, Vertex and Gemini have simulators of their own wire formats (tests/test_families.py).
MATRIX_PRESETS = tuple(p for p in PRESETS if p not in KIND_PRESETS)
KIND_OF = {p: ("openai" if p in OPENAI_PRESETS else "anthropic") for p in MATRIX_PRESETS}
BILLING = "x-anthropic-billing-header"


@functools.cache
def capabilities(preset: str) -> Capabilities:
    return parse_config({"providers": [provider_row(preset, "http://127.0.0.1:1")]}).providers[0].capabilities


def provider_row(preset: str, url: str) -> dict[str, Any]:
    kind = KIND_OF[preset]
    return {"name": "p", "kind": kind, "preset": preset, "api_key": PROVIDER_KEY,
            "base_url": url + ("/v1" if kind == "openai" else "")}  # fmt: skip


def _has_billing_block(fixture: Mapping[str, Any]) -> bool:
    system = fixture["body"].get("system")
    return isinstance(system, list) and any(str(b.get("text", "")).startswith(BILLING) for b in system)


def _tools_outside_gemini_schema(fixture: Mapping[str, Any]) -> bool:
    tools = [t for t in fixture["body"].get("tools") or [] if "input_schema" in t]
    return any(_schema_rejection(t["input_schema"], t["name"]) for t in tools)


def _is_messages(fixture: Mapping[str, Any]) -> bool:
    return "count_tokens" not in fixture["path"]


def expected_refusal(fixture: Mapping[str, Any], preset: str) -> str | None:
    """What a 400 must name when ``preset`` lacks something the request cannot lose, else None."""
    if not _is_messages(fixture):
        return None
    return capabilities(preset).first_lack(needs_of(fixture["body"]))


# -- the strict fakes ---------------------------------------------------------------------------


def _openai_json(text: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-m", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }).encode()  # fmt: skip


def strict_script(preset: str) -> Callable[[Received], Reply]:
    """A provider of ``preset``'s kind that answers 400 to what such a server rejects."""
    caps = capabilities(preset)

    def script(r: Received) -> Reply:
        if "count_tokens" in r.target:
            return Reply(headers=list(JSON_HEADERS), steps=[b'{"input_tokens": 42}'])
        body = r.json()
        if KIND_OF[preset] == "openai":
            why = openai_rejection(
                body,
                files=caps.documents == "file",
                gemini_schema=caps.schema_dialect == "gemini",
                reasoning_required=caps.reasoning_content,
            )
            if why is not None:
                message = json.dumps({"error": {"message": why, "type": "invalid_request_error"}}).encode()
                return Reply(status=400, headers=list(JSON_HEADERS), steps=[message])
            if body.get("stream"):
                return Reply(headers=list(SSE_HEADERS), steps=openai_text_stream([ANSWER]))
            return Reply(headers=list(JSON_HEADERS), steps=[_openai_json(ANSWER)])
        if preset != "anthropic" and (why := old_anthropic_rejection(r)) is not None:
            return error_reply(400, "invalid_request_error", why)
        if body.get("stream"):
            return Reply(steps=anthropic_text_events([ANSWER]))
        return Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message(ANSWER)).encode()])

    return script


def client_text(raw: bytes, stream: bool) -> str:
    """The answer's text as the client reads it, from SSE text deltas or a JSON message."""
    if not stream:
        return "".join(b.get("text", "") for b in json.loads(raw)["content"])
    text = ""
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and '"text_delta"' in line:
            text += json.loads(line[6:])["delta"]["text"]
    return text


# -- the matrix ---------------------------------------------------------------------------------


def wire_body(fixture: Mapping[str, Any]) -> bytes:
    """The fixture's body as Claude Code writes it (compact JSON)."""
    return json.dumps(fixture["body"], ensure_ascii=False, separators=(",", ":")).encode()


def rejection(preset: str, got: Received) -> str | None:
    """What a strict server of ``preset``'s kind answers 400 to in ``got``, or None."""
    caps = capabilities(preset)
    if preset == "anthropic":
        return None
    if KIND_OF[preset] == "anthropic":
        return old_anthropic_rejection(got)
    return openai_rejection(
        got.json(),
        files=caps.documents == "file",
        gemini_schema=caps.schema_dialect == "gemini",
        reasoning_required=caps.reasoning_content,
    )


def assert_sent(fixture: Mapping[str, Any], preset: str, sent: bytes, got: Received) -> None:
    """What reached the provider is what a server of ``preset``'s kind takes."""
    if preset == "anthropic":
        assert got.body == sent, "passthrough to Anthropic must be byte-identical"
        assert got.header("anthropic-beta") == fixture["headers"].get("anthropic-beta")
        return
    why = rejection(preset, got)
    assert why is None, why


async def replay(fixture: Mapping[str, Any], preset: str, upstream: FakeUpstream, b: Balancer) -> None:
    """Send ``fixture`` through ``b`` to ``upstream`` (a provider of ``preset``) and check the cell.

    Raises AssertionError when the cell is wrong.
    """
    upstream.script(strict_script(preset))
    first = len(upstream.received)
    sent = wire_body(fixture)
    headers = {**{k: v for k, v in fixture["headers"].items() if k != "content-length"}, **NO_DEDUP}
    r = await b.client.post(fixture["path"], content=sent, headers=headers)
    received = upstream.received[first:]
    refusal = expected_refusal(fixture, preset)
    if refusal is not None:
        assert r.status_code == 400, r.text
        assert refusal in r.json()["error"]["message"]
        assert not received, "a request the provider cannot take must not be sent to it"
        return
    if not _is_messages(fixture):  # count_tokens: forwarded, or answered here from an estimate
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["input_tokens"], int)
        if preset == "anthropic":
            assert received and received[-1].body == sent
        return
    assert received, f"the request never reached the provider: {r.status_code} {r.text}"
    assert_sent(fixture, preset, sent, received[-1])
    assert r.status_code == 200, r.text
    assert client_text(r.content, bool(fixture["body"].get("stream"))) == ANSWER
    if capabilities(preset).strip_billing_header:
        assert BILLING not in received[-1].body.decode(), (
            "the billing block reached a provider that strips it"
        )


# -- the table in tests/data/claude_code/README.md ---------------------------------------------


def cell_outcome(fixture: Mapping[str, Any], preset: str) -> str:
    """What the balancer does with ``fixture`` for ``preset``, in a few words (from the pure fit)."""

    if not _is_messages(fixture):  # forwarded, or answered here from an estimate (count_tokens = false)
        return "forwarded" if capabilities(preset).count_tokens else "estimated here"
    if (why := expected_refusal(fixture, preset)) is not None:
        return "400: " + why.split(" (")[0]
    body, raw = fixture["body"], wire_body(fixture)
    headers = tuple((k.encode(), v.encode()) for k, v in fixture["headers"].items())
    request = UpstreamRequest(
        path=fixture["path"].split("?")[0], query=b"", headers=headers, body=raw, payload=body,
        model=body["model"], stream=bool(body.get("stream")), needs=needs_of(body),
    )  # fmt: skip
    provider = parse_config({"providers": [provider_row(preset, "http://127.0.0.1:1")]}).providers[0]
    fitted = fit_request(provider, request, body["model"])
    if fitted.body == raw and not fitted.changes:
        return "byte-identical"
    tags = sorted({_short(change) for change in fitted.changes} - {""})
    if KIND_OF[preset] == "openai":
        tags.insert(0, "converted")
        if capabilities(preset).reasoning_content and _has_prior_thinking(body):
            tags.append("thinking as reasoning_content")
    return ", ".join(tags)


_SHORT = (
    (r"^anthropic-beta without (.*)", r"betas -\1"),
    (r"^adaptive thinking sent as enabled.*", "adaptive->enabled"),
    (r"^dropped messages\[\d+\]\.content\.thinking$", "prior thinking dropped"),
    (r"^dropped thinking$", "-thinking"),
    (r"^(?:dropped )?(\w+)(?:\.(\w+))? removed.*", r"-\1.\2"),
    (r"^dropped (\w+)$", r"-\1"),
    (r".*system message\(s\) in messages\[\] moved.*", "system folded"),
    (r".*document\(s\) sent as text.*", "docs as text"),
    (r"^system without Claude Code's billing header$", "-billing header"),
    (r"^tool schemas in the gemini dialect.*", "gemini schemas"),
    (r"^defer_loading removed.*", "-deferred tools"),
    (r"^messages\[\]\.output_config\.effort removed$", "-turn effort"),
    (r"^fields (.*) removed$", r"-\1"),
    (r"^converted$", ""),
)


def _short(change: str) -> str:
    for pattern, replacement in _SHORT:
        if re.match(pattern, change):
            return re.sub(pattern, replacement, change).replace(".None", "").rstrip(".")
    return change


def _has_prior_thinking(body: Mapping[str, Any]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(b.get("type") == "thinking" for b in m["content"])
        for m in body["messages"]
        if m.get("role") == "assistant"
    )


def matrix_table() -> str:
    """The matrix as Markdown: a row per fixture, a column per preset."""
    presets = list(MATRIX_PRESETS)
    lines = ["| fixture | " + " | ".join(presets) + " |", "|---" * (len(presets) + 1) + "|"]
    for fixture_id, fixture in load_fixtures(FIXTURES):
        cells = [cell_outcome(fixture, p).replace("|", "/") for p in presets]
        lines.append(f"| {fixture_id} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
