"""Edges of making a request fit a provider (capabilities, fit, thinking), found by attacking it.

Each test states what a provider would answer to what the balancer sends it, or what the
client should get: empty and null fields of features a provider lacks, cache control inside
tool results, a provider's own beta header, open tool loops behind system messages or split
user turns, documents returned by tools, and a signature book fed by a lying Redis.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_balancer.policy.plan import fit_plan
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol.features import needs_of
from trio_balancer.protocol.thinking import FAMILY_NAMES_MAX, SignatureBook
from trio_balancer.upstream.fit import fit_request

from .fakes import (
    FakeUpstream,
    Received,
    Reply,
    anthropic_text_events,
    old_anthropic,
    old_anthropic_rejection,
    openai_rejection,
)
from .helpers import NO_DEDUP, BalancerFactory, fit_provider, fit_request_of, sent_betas
from .signing_fakes import SigningProvider


def old_rejects(fitted: Any) -> str | None:
    received = Received(
        "POST", "/v1/messages", [("anthropic-beta", ",".join(sent_betas(fitted.headers)))], fitted.body
    )
    return old_anthropic_rejection(received)


def base(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-opus-4-6", "max_tokens": 4096,
            "messages": [{"role": "user", "content": "hi"}], **extra}  # fmt: skip


OLD = {"preset": "anthropic-compatible"}


# -- header and body consistent for an older Anthropic-compatible server -------------------------


class TestOldAnthropicEmptyFields:
    """Fields Claude Code may send empty or null: the strict server rejects the field whatever its value."""

    def test_empty_mcp_servers_with_its_flag(self) -> None:
        """``mcp_servers: []`` with the mcp-client flag: the flag is stripped, the field kept."""
        req = fit_request_of(base(mcp_servers=[]), "claude-code-20250219,mcp-client-2025-04-04")
        fitted = fit_request(fit_provider(**OLD), req, req.model)
        body = json.loads(fitted.body)
        assert "mcp-client-2025-04-04" not in sent_betas(fitted.headers)
        assert "mcp_servers" not in body, "flag stripped but field kept"
        why = old_rejects(fitted)
        assert why is None, why

    def test_null_context_management(self) -> None:
        req = fit_request_of(base(context_management=None), "context-management-2025-06-27")
        fitted = fit_request(fit_provider(**OLD), req, req.model)
        why = old_rejects(fitted)
        assert why is None, why

    def test_empty_output_config(self) -> None:
        req = fit_request_of(base(output_config={}), "effort-2025-11-24")
        fitted = fit_request(fit_provider(**OLD), req, req.model)
        why = old_rejects(fitted)
        assert why is None, why

    def test_output_config_with_null_format(self) -> None:
        req = fit_request_of(base(output_config={"effort": "low", "format": None}))
        fitted = fit_request(fit_provider(**OLD), req, req.model)
        why = old_rejects(fitted)
        assert why is None, why

    def test_null_container(self) -> None:
        req = fit_request_of(base(container=None))
        fitted = fit_request(fit_provider(**OLD), req, req.model)
        why = old_rejects(fitted)
        assert why is None, why


def test_cache_ttl_inside_a_tool_result_is_removed_with_its_flag() -> None:
    """A text block inside a tool_result may carry cache_control (Anthropic's TextBlockParam):
    its ttl stays for a provider without extended cache TTL, while the flag is stripped."""
    body = base(messages=[
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "out", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
    ])  # fmt: skip
    req = fit_request_of(body, "extended-cache-ttl-2025-04-11")
    fitted = fit_request(fit_provider(**OLD), req, req.model)
    assert sent_betas(fitted.headers) == []
    inner = json.loads(fitted.body)["messages"][2]["content"][0]["content"][0]
    assert inner["cache_control"] == {"type": "ephemeral"}


def test_provider_configured_beta_header_survives_fitting() -> None:
    """A provider's own ``headers`` table sets anthropic-beta (its override of the client's):
    when a client flag must go, the fitted header is rebuilt from the client's flags and the
    configured value is lost."""
    p = fit_provider(**OLD, headers={"anthropic-beta": "claude-code-20250219"})
    req = fit_request_of(base(), "interleaved-thinking-2025-05-14,context-management-2025-06-27")
    plain = fit_request_of(base(), "claude-code-20250219")
    unchanged = fit_request(p, plain, plain.model)
    fitted = fit_request(p, req, req.model)
    assert sent_betas(unchanged.headers) == ["claude-code-20250219"]
    assert [v for n, v in fitted.headers if n == b"anthropic-beta"] == [b"claude-code-20250219"]


# -- thinking and system messages together ------------------------------------------------------


def tool_loop(*, between: list[dict[str, Any]], signature: str) -> dict[str, Any]:
    """A Claude Code tool loop begun on Anthropic (its signed thinking), a system message (a
    reminder) put between the tool call and its result."""
    return base(
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should run ls", "signature": signature},
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}},
            ]},
            *between,
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a b"}]},
        ],
    )  # fmt: skip


def test_open_tool_loop_behind_a_system_message_moved_to_another_family() -> None:
    """Anthropic's thinking is dropped for family "p" (right), which leaves the open loop's
    assistant message without its leading thinking block; the system message between it and
    the tool result hides the loop from the rule, so thinking stays on and the signing
    provider answers its open-loop 400. Folding the system message away happens after."""
    book = SignatureBook()
    book.remember("anthropic-sig", "anthropic")
    body = tool_loop(
        between=[{"role": "system", "content": "Reminder: be brief."}], signature="anthropic-sig"
    )
    req = fit_request_of(body)
    fitted = fit_request(fit_provider(**OLD), req, req.model, thinking=book)
    sent = json.loads(fitted.body)
    why = SigningProvider(family="p", script=[]).rejection(sent)
    assert why is None, why


def test_open_tool_loop_without_system_message_is_fine() -> None:
    """The control: the same loop without the system message is sent without thinking."""
    book = SignatureBook()
    book.remember("anthropic-sig", "anthropic")
    req = fit_request_of(tool_loop(between=[], signature="anthropic-sig"))
    sent = json.loads(fit_request(fit_provider(**OLD), req, req.model, thinking=book).body)
    assert SigningProvider(family="p", script=[]).rejection(sent) is None


def test_open_tool_loop_with_the_tool_result_and_text_in_two_user_messages() -> None:
    """Two consecutive user messages after the tool call (the API joins them into one): the
    loop is still open, but the rule looks only at a last message holding a tool_result."""
    book = SignatureBook()
    book.remember("anthropic-sig", "anthropic")
    body = tool_loop(between=[], signature="anthropic-sig")
    body["messages"].append({"role": "user", "content": [{"type": "text", "text": "and then?"}]})
    req = fit_request_of(body)
    sent = json.loads(fit_request(fit_provider(**OLD), req, req.model, thinking=book).body)
    messages = sent["messages"]
    # what the provider sees after joining consecutive user messages
    joined = [*messages[:-2], {"role": "user", "content": messages[-2]["content"] + messages[-1]["content"]}]
    why = SigningProvider(family="p", script=[]).rejection({**sent, "messages": joined})
    assert why is None, why


# -- documents for OpenAI-compatible providers ---------------------------------------------------

PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}


def test_pdf_returned_by_a_tool_reaches_an_openai_provider_that_reads_pdfs() -> None:
    """Claude Code's Read tool answers a PDF as a document block inside the tool_result. The
    plan keeps OpenAI (preset "openai" reads PDFs as file parts), but the conversion drops the
    document: the model answers without the file it was asked to read."""
    body = base(messages=[
        {"role": "user", "content": "summarise report.pdf"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "report.pdf"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [PDF]}]},
    ])  # fmt: skip
    p = fit_provider("openai", preset="openai")
    kept, skipped = fit_plan([Attempt(p, "gpt")], needs_of(body))
    assert kept and not skipped
    req = fit_request_of(body)
    fitted = fit_request(p, req, "gpt")
    sent = json.loads(fitted.body)
    assert openai_rejection(sent, files=True) is None
    parts = [part for m in sent["messages"] if isinstance(m.get("content"), list) for part in m["content"]]
    assert any(part.get("type") == "file" for part in parts), f"document lost: {fitted.changes}"


def test_text_document_returned_by_a_tool_reaches_an_openai_provider() -> None:
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "SECRET-NOTES"}}
    body = base(messages=[
        {"role": "user", "content": "read notes"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [doc]}]},
    ])  # fmt: skip
    p = fit_provider("openai", preset="deepseek")
    kept, _ = fit_plan([Attempt(p, "ds")], needs_of(body))
    assert kept
    req = fit_request_of(body)
    fitted = fit_request(p, req, "ds")
    text = fitted.body.decode()
    assert "SECRET-NOTES" in text, f"document lost: {fitted.changes}"


# -- the signature book and Redis ----------------------------------------------------------------


def test_family_names_learned_from_redis_are_bounded() -> None:
    """Families come from Redis as arbitrary strings (another instance's config, or a value
    someone wrote there): the names kept are bounded, and one no provider could have is ignored."""
    book = SignatureBook(max_entries=10)
    for i in range(1000):
        book.learn(i.to_bytes(12, "big"), f"family-{i}")
    assert len(book) == 10
    assert len(book._names) <= FAMILY_NAMES_MAX
    fresh = SignatureBook()
    fresh.learn(b"k" * 12, "x" * 10_000)
    assert len(fresh) == 0


class _LyingRedis:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def mget(self, names: list[str]) -> list[Any]:
        return self.values


async def test_redis_answering_fewer_values_than_asked_does_not_fail_the_request() -> None:
    """recall_thinking zips keys and values strictly: a Redis (or proxy in front of it) that
    answers MGET with a short list raises ValueError out of the request path (a 500)."""
    from trio_balancer.app.cluster import Cluster

    book = SignatureBook()
    cluster = Cluster("redis://127.0.0.1:1", thinking=book)
    cluster.degraded = False
    cluster._redis = _LyingRedis([b"x"])  # type: ignore[assignment]
    await cluster.recall_thinking(["sig-a", "sig-b"])  # must not raise
    assert book.family_of("sig-b") is None


async def test_redis_answering_text_values_does_not_fail_the_request() -> None:
    """A Redis client set to decode responses (or a lying proxy) answers str: ``.decode`` on it
    raises AttributeError out of the request path."""
    from trio_balancer.app.cluster import Cluster

    book = SignatureBook()
    cluster = Cluster("redis://127.0.0.1:1", thinking=book)
    cluster.degraded = False
    cluster._redis = _LyingRedis(["b", 7])  # type: ignore[assignment]
    await cluster.recall_thinking(["sig-a", "sig-b"])  # must not raise


async def test_empty_mcp_servers_reaches_an_older_server_as_a_400(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Through the balancer: the strict server answers 400 "mcp_servers: Extra inputs are not
    permitted" and the client sees it, though the request needs nothing the provider lacks."""
    up = await FakeUpstream(old_anthropic(Reply(steps=anthropic_text_events(["ok"])))).start(nursery)
    b = await balancer_for(up, preset="anthropic-compatible")
    body = {**base(stream=True), "mcp_servers": []}
    headers = {"anthropic-beta": "claude-code-20250219,mcp-client-2025-04-04", **NO_DEDUP}
    r = await b.client.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text


# -- properties that held up (kept as guards) ----------------------------------------------------


_FIELD = st.sampled_from([
    ("context_management", {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}),
    ("output_config", {"effort": "high"}),
    ("thinking", {"type": "adaptive"}),
    ("thinking", {"type": "enabled", "budget_tokens": 1024}),
    ("system", [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h", "scope": "global"}}]),
    ("system", "plain"),
    ("speed", "fast"),
])  # fmt: skip
_MESSAGE = st.sampled_from([
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
    {"role": "system", "content": "s"},
    {"role": "system", "content": [{"type": "text", "text": "t"}]},
    {"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}]},
    {"role": "user", "content": [{"type": "text", "text": "c", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]},
])  # fmt: skip
_BETAS = st.lists(st.sampled_from([
    "claude-code-20250219", "context-management-2025-06-27", "effort-2025-11-24",
    "extended-cache-ttl-2025-04-11", "prompt-caching-scope-2026-01-05", " Interleaved-Thinking-2025-05-14 ", "",
]), max_size=6)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.lists(_FIELD, max_size=5), messages=st.lists(_MESSAGE, min_size=1, max_size=6), betas=_BETAS)
def test_property_full_provider_bytes_and_payload_untouched(
    fields: list[tuple[str, Any]], messages: list[dict[str, Any]], betas: list[str]
) -> None:
    body = base(messages=copy.deepcopy(messages), **dict(fields))
    snapshot = copy.deepcopy(body)
    req = fit_request_of(body, ",".join(betas))
    full = fit_request(fit_provider(), req, req.model, thinking=SignatureBook())
    assert full.body == req.body and full.changes == ()
    old = fit_request(fit_provider(**OLD), req, req.model, thinking=SignatureBook())
    assert body == snapshot
    why = old_rejects(old)
    assert why is None or why.startswith("Unexpected value(s) ` Interleaved"), why
