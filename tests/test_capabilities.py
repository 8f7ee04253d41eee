"""Provider capabilities: a request made to fit each provider, header and body together.

The pure rules (``upstream/fit.py`` over ``protocol/features.py``, ``system_messages.py``,
``documents.py``) are tested directly; then through the balancer against a strict older
Anthropic-compatible fake that answers 400 to what such servers reject.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio

from trio_balancer.config import Capabilities, ConfigError, ProviderConfig
from trio_balancer.errors import InvalidRequest
from trio_balancer.policy.plan import fit_plan
from trio_balancer.policy.routing import Attempt
from trio_balancer.protocol import feature_drops
from trio_balancer.protocol.feature_drops import DROPPABLE
from trio_balancer.protocol.features import FEATURE_BETAS, needs_of
from trio_balancer.upstream.fit import fit_request
from trio_balancer.upstream.request import UpstreamRequest

from .fakes import (
    FakeUpstream,
    Received,
    Reply,
    anthropic_text_events,
    old_anthropic,
    old_anthropic_rejection,
)
from .helpers import (
    NO_DEDUP,
    PROVIDER_KEY,
    BalancerFactory,
    assert_error,
    fit_provider,
    fit_request_of,
    sent_betas,
)

BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "effort-2025-11-24,extended-cache-ttl-2025-04-11,prompt-caching-scope-2026-01-05"
)


def claude_code_body(**extra: Any) -> dict[str, Any]:
    """The fields of a current Claude Code turn that older servers reject, in their real shapes."""
    return {
        "model": "claude-opus-4-6",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=cli; cch=00000;"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral", "ttl": "1h", "scope": "global"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}, "title": "a.txt"},
                {"type": "text", "text": "read it"},
            ]},
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_abc_account_def_session_123"},
        **extra,
    }  # fmt: skip


# A request that needs everything a request can need but a document.
SERVER_TOOL_BODY: dict[str, Any] = {
    "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "m"}],
    "container": "c1",
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    "messages": [],
}


def request_of(body: dict[str, Any], betas: str = BETAS) -> UpstreamRequest:
    return fit_request_of(body, betas)


class TestCapabilityConfig:
    def test_every_feature_name_is_a_capability(self) -> None:
        """Features, droppable features and needs name ``Capabilities`` fields (fit reads them by name)."""
        fields = {f.name: f.type for f in attrs.fields(Capabilities)}
        names = {*FEATURE_BETAS, *DROPPABLE} | {
            n.what for n in needs_of(SERVER_TOOL_BODY) if n.what != "server_tools"
        }
        assert names <= fields.keys()
        assert all(fields[n] == "bool" for n in names), {n: fields[n] for n in names}
        assert set(feature_drops._REMOVERS) == set(DROPPABLE)  # each droppable feature has its remover

    def test_anthropic_lacks_nothing_and_openai_kind_takes_what_conversion_carries(self) -> None:
        full = fit_provider().capabilities
        assert full.accepts_beta("anything-2030-01-01") and full.runs_server_tool("web_search_20250305")
        assert (full.thinking_family, full.documents, full.system_messages) == ("anthropic", "native", True)
        oai = fit_provider("openai").capabilities
        assert oai.betas == () and not oai.context_management and oai.system_messages
        assert oai.thinking_family == "p"  # a third party's reasoning is its own

    def test_preset_then_table_override(self) -> None:
        caps = fit_provider("openai", preset="deepseek", capabilities={"context_window": 64000}).capabilities
        assert caps.reasoning_content and caps.context_window == 64000
        old = fit_provider(preset="anthropic-compatible", capabilities={"system_messages": True}).capabilities
        assert old.system_messages and not old.context_management and old.thinking_family == "p"

    @pytest.mark.parametrize(
        ("row", "message"),
        [
            ({"preset": "nope"}, "providers[0].preset: must be one of"),
            ({"capabilities": {"bogus": 1}}, "providers[0].capabilities.bogus: unknown key"),
            ({"capabilities": {"documents": "pdf"}}, "providers[0].capabilities.documents: must be one of"),
            (
                {"capabilities": {"betas": "all"}},
                "providers[0].capabilities.betas: must be a list of strings",
            ),
        ],
    )
    def test_bad_capabilities_name_the_key(self, row: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            fit_provider(**row)


class TestFit:
    def test_a_provider_that_lacks_nothing_gets_the_clients_bytes(self) -> None:
        req = request_of(claude_code_body())
        fitted = fit_request(fit_provider(), req, req.model)
        assert fitted.body == req.body and fitted.changes == ()
        assert sent_betas(fitted.headers) == BETAS.split(",")

    def test_older_anthropic_compatible_gets_header_and_body_made_consistent(self) -> None:
        req = request_of(claude_code_body())
        fitted = fit_request(fit_provider(preset="anthropic-compatible"), req, req.model)
        body = json.loads(fitted.body)
        assert sent_betas(fitted.headers) == ["claude-code-20250219", "interleaved-thinking-2025-05-14"]
        assert "context_management" not in body and "output_config" not in body
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}  # medium effort
        assert body["system"][0] == {  # the billing block gone, the TTL and scope too
            "type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}
        }  # fmt: skip
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["system"][-1]["text"] == (
            "[System message, after message 2 of the conversation]\nThe user switched to plan mode."
        )
        assert body["messages"][2]["content"][0] == {"type": "text", "text": "Document: a.txt\nnotes"}
        received = Received(
            "POST", "/v1/messages", [("anthropic-beta", ",".join(sent_betas(fitted.headers)))], fitted.body
        )
        assert old_anthropic_rejection(received) is None
        assert req.payload == claude_code_body()  # the client's request is left as it was

    def test_fields_a_strict_provider_does_not_list_are_left_out(self) -> None:
        """A field Claude Code starts sending tomorrow ("Extra inputs are not permitted" on a
        strict server) goes only to providers that take every field, or list it."""
        req = request_of(claude_code_body(speed="fast", diagnostics={"x": 1}))
        fitted = fit_request(fit_provider(preset="anthropic-compatible"), req, req.model)
        body = json.loads(fitted.body)
        assert "speed" not in body and "diagnostics" not in body
        assert any("diagnostics, speed" in c for c in fitted.changes)
        received = Received(
            "POST", "/v1/messages", [("anthropic-beta", ",".join(sent_betas(fitted.headers)))], fitted.body
        )
        assert old_anthropic_rejection(received) is None
        listed = fit_provider(preset="anthropic-compatible", capabilities={"body_fields": ["*"]})
        assert "speed" in json.loads(fit_request(listed, req, req.model).body)
        full = fit_request(fit_provider(), req, req.model)
        assert full.body == req.body

    def test_a_turns_own_effort_goes_with_the_effort_flag(self) -> None:
        """Claude Code >= 2.1.3xx (per-turn-control beta) also puts ``output_config.effort`` on a
        system message: a provider without effort that takes system messages loses it there too."""
        body = claude_code_body()
        body["messages"][2] = {**body["messages"][2], "output_config": {"effort": "high"}}
        row = {"preset": "anthropic-compatible", "capabilities": {"system_messages": True}}
        req = request_of(body)
        sent = json.loads(fit_request(fit_provider(**row), req, req.model).body)
        assert sent["messages"][2] == {"role": "system", "content": "The user switched to plan mode."}
        assert fit_request(fit_provider(), req, req.model).body == req.body

    def test_deferred_tools_without_tool_search(self) -> None:
        """Claude Code >= 2.1.3xx marks tools ``defer_loading`` (loaded when its tool search
        finds them) under ``advanced-tool-use-``: a provider without it gets neither the flag nor
        the field. A deferred tool the conversation never used is not in the model's context on
        Anthropic either, so it goes; one it used is loaded, and a ``tool_reference`` it got
        back becomes text."""
        tools = [
            {"name": "Read", "input_schema": {"type": "object"}},
            {"name": "DeferredToolPlaceholder", "input_schema": {"type": "object"}, "defer_loading": True},
            {"name": "Grep", "input_schema": {"type": "object"}, "defer_loading": True},
        ]
        messages = [
            {"role": "user", "content": "find it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "s1", "name": "ToolSearch", "input": {"query": "grep"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "s1", "content": [{"type": "tool_reference", "tool_name": "Grep"}]}]},
        ]  # fmt: skip
        req = request_of(
            {"model": "claude-opus-4-6", "max_tokens": 100, "tools": tools, "messages": messages},
            betas="claude-code-20250219,advanced-tool-use-2025-11-20",
        )
        fitted = fit_request(fit_provider(preset="anthropic-compatible"), req, req.model)
        body = json.loads(fitted.body)
        assert sent_betas(fitted.headers) == ["claude-code-20250219"]
        assert body["tools"] == [tools[0], {"name": "Grep", "input_schema": {"type": "object"}}]
        assert body["messages"][2]["content"][0]["content"] == [{"type": "text", "text": "Tool loaded: Grep"}]
        assert fit_request(fit_provider(), req, req.model).body == req.body
        converted = json.loads(fit_request(fit_provider("openai"), req, req.model).body)
        assert [t["function"]["name"] for t in converted["tools"]] == ["Read", "Grep"]

    def test_a_flag_the_provider_refuses_takes_its_field_along(self) -> None:
        """``betas`` without the context-management flag: the field goes too, never one alone."""
        caps = {"betas": ["claude-code-20250219"]}
        req = request_of(claude_code_body())
        fitted = fit_request(fit_provider(capabilities=caps), req, req.model)
        body = json.loads(fitted.body)
        assert sent_betas(fitted.headers) == ["claude-code-20250219"]
        assert "context_management" not in body and "effort" not in body.get("output_config", {})
        assert body["messages"] == claude_code_body()["messages"]  # system messages are taken

    def test_adaptive_thinking_budget_stays_under_max_tokens(self) -> None:
        req = request_of(claude_code_body(max_tokens=1500))
        body = json.loads(fit_request(fit_provider(preset="anthropic-compatible"), req, req.model).body)
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 1499}
        req = request_of(claude_code_body(max_tokens=800))
        body = json.loads(fit_request(fit_provider(preset="anthropic-compatible"), req, req.model).body)
        assert "thinking" not in body

    def test_a_renamed_model_with_nothing_else_to_change(self) -> None:
        req = request_of({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "")
        fitted = fit_request(fit_provider(preset="anthropic-compatible"), req, "other")
        assert json.loads(fitted.body)["model"] == "other" and fitted.changes == ()


WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}


class TestPlan:
    def plan(self, body: dict[str, Any], *providers: ProviderConfig) -> tuple[list[str], list[str]]:
        kept, skipped = fit_plan([Attempt(p, "m") for p in providers], needs_of(body))
        return [a.provider.name for a in kept], [why for _, why in skipped]

    def test_server_tool_skips_a_provider_that_does_not_run_it(self) -> None:
        body = claude_code_body(tools=[WEB_SEARCH])
        old, full = fit_provider(name="old", preset="anthropic-compatible"), fit_provider(name="full")
        kept, why = self.plan(body, old, full)
        assert kept == ["full"] and why == ["does not run the server tool web_search_20250305 (tools[0])"]

    def test_nothing_left_is_a_400_naming_the_block(self) -> None:
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [PDF]}]}
        with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content\[0\]") as info:
            self.plan(body, fit_provider("openai", name="ds", preset="deepseek"))
        assert "cannot read a pdf document" in str(info.value)

    def test_mcp_servers_keep_their_flag_on_a_provider_that_has_them(self) -> None:
        body = claude_code_body(mcp_servers=[{"type": "url", "url": "https://mcp.example", "name": "x"}])
        req = request_of(body, "mcp-client-2025-04-04")
        fitted = fit_request(fit_provider(capabilities={"context_management": False}), req, req.model)
        assert sent_betas(fitted.headers) == ["mcp-client-2025-04-04"]
        assert json.loads(fitted.body)["mcp_servers"] == body["mcp_servers"]


class TestOpenAIFit:
    def test_system_message_in_place_and_documents(self) -> None:
        body = claude_code_body()
        body["messages"][3]["content"].append(PDF)
        req = request_of(body)
        sent = json.loads(fit_request(fit_provider("openai", preset="openai"), req, "gpt").body)
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["system", "user", "assistant", "system", "user"]
        assert sent["messages"][3]["content"] == "The user switched to plan mode."
        parts = sent["messages"][4]["content"]
        assert parts[0] == {"type": "text", "text": "Document: a.txt\nnotes"}
        assert parts[2]["type"] == "file" and parts[2]["file"]["file_data"].startswith(
            "data:application/pdf;base64,"
        )


async def test_claude_code_turn_reaches_an_older_anthropic_compatible_server(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Without its preset the strict fake answers 400 (the bug); with it, the turn is served."""
    up = await FakeUpstream(old_anthropic(Reply(steps=anthropic_text_events(["ok"])))).start(nursery)
    headers = {"anthropic-beta": BETAS, **NO_DEDUP}
    plain = await balancer_for(up)
    r = await plain.client.post("/v1/messages", json=claude_code_body(), headers=headers)
    assert_error(r, 400, "invalid_request_error")
    fitted = await balancer_for(up, preset="anthropic-compatible")
    r = await fitted.client.post("/v1/messages", json=claude_code_body(), headers=headers)
    assert r.status_code == 200 and "ok" in r.text


async def test_web_search_goes_to_the_provider_that_runs_it_and_the_ledger_says_why(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    old = await FakeUpstream(Reply(steps=anthropic_text_events(["old"]))).start(nursery)
    full = await FakeUpstream(Reply(steps=anthropic_text_events(["searched"]))).start(nursery)
    config = {
        "providers": [
            {"name": "old", "kind": "anthropic", "base_url": old.url, "api_key": PROVIDER_KEY, "preset": "anthropic-compatible"},
            {"name": "full", "kind": "anthropic", "base_url": full.url, "api_key": PROVIDER_KEY},
        ]
    }  # fmt: skip
    b = await balancer_for(config=config)
    body = {"model": "claude-opus-4-6", "max_tokens": 64, "tools": [WEB_SEARCH],
            "messages": [{"role": "user", "content": "news?"}]}  # fmt: skip
    r = await b.client.post("/v1/messages", json=body, headers=NO_DEDUP)
    assert r.status_code == 200 and "searched" in r.text
    assert old.received == [] and len(full.received) == 1
    [row] = await b.ledger_rows(1)
    assert row["attempts"][0] == {
        "provider": "old", "model": "claude-opus-4-6", "status": None, "skipped": True,
        "error": "skipped: does not run the server tool web_search_20250305 (tools[0])",
    }  # fmt: skip
    assert row["attempts"][1]["provider"] == "full" and row["attempts"][1]["error"] is None

    only_old = await balancer_for(config={"providers": config["providers"][:1]})
    r = await only_old.client.post("/v1/messages", json=body, headers=NO_DEDUP)
    message = assert_error(r, 400, "invalid_request_error")["error"]["message"]
    assert "web_search_20250305" in message and "tools[0]" in message and old.received == []
