"""Claude Code's billing block and identity: the billing block out of the dedup signature's way
and out of third parties' prompts; ``X-Claude-Code-Session-Id`` the sticky-session key.

The pure rules (``protocol/billing.py``) are tested directly, on the shapes Claude Code sends
(a system block of its own, a line at the top of the identity block, a string system prompt;
with ``cch=``, without it, with ``cc_prev_req=``); then the dedup signature, the fit for each
preset, and through the balancer with the official ``anthropic`` SDK: two turns differing
only in ``cch=`` share one upstream call, and a third-party provider is sent the same system
prompt bytes on both; and the session header keeping a conversation on its provider.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import attrs
import pytest
import trio

from trio_balancer.protocol.billing import billing_line, strip_billing_header, without_billing_volatile
from trio_balancer.protocol.dedup import signature
from trio_balancer.upstream.fit import fit_request
from trio_balancer.upstream.request import UpstreamRequest

from .fakes import JSON_HEADERS, FakeUpstream, Reply, anthropic_message
from .helpers import NO_DEDUP, BalancerFactory, fit_provider, fit_request_of, provider_config

BILLING = "x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=cli; cch={};"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
CACHED = {"type": "ephemeral"}
OK = Reply(headers=JSON_HEADERS, steps=[json.dumps(anthropic_message("ok")).encode()])


def system_blocks(cch: str = "1a2b3") -> list[dict[str, Any]]:
    """The system prompt as Claude Code sends it: the billing block first, on its own."""
    return [
        {"type": "text", "text": BILLING.format(cch)},
        {"type": "text", "text": IDENTITY, "cache_control": CACHED},
        {"type": "text", "text": "Here are your instructions.", "cache_control": CACHED},
    ]


def body_with(system: Any, content: str = "hi") -> dict[str, Any]:
    return {
        "model": "claude-opus-4-6",
        "max_tokens": 64,
        "system": system,
        "messages": [{"role": "user", "content": content}],
        "metadata": {"user_id": "user_abc_account_def_session_123"},
    }


class TestFind:
    def test_the_block_of_its_own_a_line_in_a_block_and_a_string(self) -> None:
        line = BILLING.format("1a2b3")
        assert billing_line(body_with(system_blocks())) == line
        assert billing_line(body_with([{"type": "text", "text": f"{line}\n{IDENTITY}"}])) == line
        assert billing_line(body_with(f"{IDENTITY}\n{line}\nMore.")) == line
        assert billing_line(body_with(IDENTITY)) is None
        assert billing_line({"model": "m", "messages": []}) is None

    def test_only_at_the_start_of_a_line(self) -> None:
        """A user quoting the header in the middle of a sentence is not a billing block."""
        quoted = f"Claude Code sends {BILLING.format('1a2b3')} at the top"
        assert billing_line(body_with(quoted)) is None
        assert strip_billing_header(body_with(quoted))[1] is None


class TestVolatile:
    def test_cch_left_out_everything_else_kept(self) -> None:
        a, b = body_with(system_blocks("1a2b3")), body_with(system_blocks("ffff0"))
        assert without_billing_volatile(a) == without_billing_volatile(b)
        stable = without_billing_volatile(a)["system"][0]["text"]
        assert stable == "x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=cli;"
        assert a == body_with(system_blocks("1a2b3"))  # its input untouched

    def test_cc_prev_req_is_volatile_too(self) -> None:
        """Claude Code 2.1.222 names the previous request in the header: a new value every turn."""
        line = "x-anthropic-billing-header: cc_version=2.1.222; cc_prev_req=req_011Cdk3xyz; cch=abcde;"
        stable = without_billing_volatile(body_with(line))["system"]
        assert stable == "x-anthropic-billing-header: cc_version=2.1.222;"

    def test_without_a_billing_block_the_same_object(self) -> None:
        body = body_with(IDENTITY)
        assert without_billing_volatile(body) is body
        no_cch = body_with("x-anthropic-billing-header: cc_version=2.1.181.0ab; cc_entrypoint=cli;")
        assert without_billing_volatile(no_cch) is no_cch

    def test_a_different_version_or_prompt_still_signs_differently(self) -> None:
        a = body_with(system_blocks())
        b = copy.deepcopy(a)
        b["system"][0]["text"] = b["system"][0]["text"].replace("2.1.197", "2.1.198")
        assert without_billing_volatile(a) != without_billing_volatile(b)

    def test_the_dedup_signature_ignores_cch_only(self) -> None:
        def sign(body: dict[str, Any]) -> str:
            return signature(body, path="/v1/messages", query=b"", headers=[], identity="c")

        assert sign(body_with(system_blocks("1a2b3"))) == sign(body_with(system_blocks("ffff0")))
        assert sign(body_with(system_blocks())) != sign(body_with(system_blocks(), content="other"))

    def test_text_after_an_unterminated_cch_value_is_still_signed(self) -> None:
        """Only the value is volatile: text after it on the line is the prompt's (found by an
        attack: two prompts, French and German, shared one flight and a cached answer)."""
        head = "x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=cli; cch="
        french = body_with(head + "1a2b3 Always answer in French.")
        german = body_with(head + "4c5d6 Always answer in German.")
        assert without_billing_volatile(french) != without_billing_volatile(german)
        assert without_billing_volatile(french) == without_billing_volatile(
            body_with(head + "ffff Always answer in French.")
        )


class TestStrip:
    def test_a_block_of_its_own_goes(self) -> None:
        body = body_with(system_blocks())
        stripped, note = strip_billing_header(body)
        assert note == "system without Claude Code's billing header"
        assert stripped["system"] == system_blocks()[1:]
        assert body == body_with(system_blocks())  # its input untouched

    def test_a_line_of_a_block_goes_and_the_rest_of_the_block_stays(self) -> None:
        block = {"type": "text", "text": f"{BILLING.format('1a2b3')}\n{IDENTITY}", "cache_control": CACHED}
        stripped, note = strip_billing_header(body_with([block]))
        assert note is not None
        assert stripped["system"] == [{"type": "text", "text": IDENTITY, "cache_control": CACHED}]

    def test_a_string_system_prompt(self) -> None:
        stripped, _ = strip_billing_header(body_with(f"{BILLING.format('1a2b3')}\n{IDENTITY}"))
        assert stripped["system"] == IDENTITY
        stripped, _ = strip_billing_header(body_with(f"{IDENTITY}\n{BILLING.format('1a2b3')}"))
        assert stripped["system"] == IDENTITY
        only, _ = strip_billing_header(body_with(BILLING.format("1a2b3")))
        assert "system" not in only

    def test_a_removed_blocks_cache_breakpoint_moves_to_the_previous_block(self) -> None:
        """Breakpoints count (at most 4) and place the cached prefix: the one on a removed block
        goes to the block before it, so the same prefix up to there is still cached."""
        system = [
            {"type": "text", "text": IDENTITY},
            {
                "type": "text",
                "text": BILLING.format("1a2b3"),
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
            {"type": "text", "text": "Instructions."},
        ]
        stripped, _ = strip_billing_header(body_with(system))
        assert stripped["system"] == [
            {"type": "text", "text": IDENTITY, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "Instructions."},
        ]

    def test_a_first_blocks_breakpoint_goes_to_the_next_one_without_its_own(self) -> None:
        system = [
            {"type": "text", "text": BILLING.format("1a2b3"), "cache_control": CACHED},
            {"type": "text", "text": IDENTITY},
        ]
        stripped, _ = strip_billing_header(body_with(system))
        assert stripped["system"] == [{"type": "text", "text": IDENTITY, "cache_control": CACHED}]
        alone, _ = strip_billing_header(body_with(system[:1]))
        assert "system" not in alone

    def test_nothing_to_strip_no_change(self) -> None:
        body = body_with([{"type": "text", "text": IDENTITY}])
        assert strip_billing_header(body) == (body, None)
        assert strip_billing_header({"model": "m", "messages": []})[1] is None


class TestFit:
    def test_anthropic_keeps_its_billing_block_byte_for_byte(self) -> None:
        req = fit_request_of(body_with(system_blocks()))
        fitted = fit_request(fit_provider(), req, req.model)
        assert fitted.body == req.body and fitted.changes == ()

    @pytest.mark.parametrize(
        ("kind", "preset"),
        [
            ("anthropic", "anthropic-compatible"),
            ("openai", None),
            ("openai", "openai"),
            ("openai", "deepseek"),
            ("openai", "kimi"),
            ("openai", "gemini-openai"),
        ],
    )
    def test_every_third_party_preset_strips_it(self, kind: str, preset: str | None) -> None:
        row = {"preset": preset} if preset else {}
        req = fit_request_of(body_with(system_blocks()))
        fitted = fit_request(fit_provider(kind, **row), req, req.model)
        assert b"x-anthropic-billing-header" not in fitted.body
        assert IDENTITY.encode() in fitted.body
        assert "system without Claude Code's billing header" in fitted.changes

    def test_the_capability_turns_it_off(self) -> None:
        """A relay in front of Anthropic's own API may want the block kept: it says so."""
        caps = {"strip_billing_header": False}
        req = fit_request_of(body_with(system_blocks()))
        fitted = fit_request(fit_provider(preset="anthropic-compatible", capabilities=caps), req, req.model)
        assert b"x-anthropic-billing-header" in fitted.body


def sdk(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)


async def test_two_turns_differing_only_in_cch_share_one_upstream_call(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    up = await FakeUpstream(OK).start(nursery)
    b = await balancer_for(up)
    async with sdk(b.url) as client:
        for cch in ("1a2b3", "ffff0"):
            reply = await client.messages.create(
                model="claude-opus-4-6",
                max_tokens=64,
                system=system_blocks(cch),  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "hi"}],
            )
            assert reply.content[0].type == "text"
    assert len(up.received) == 1


async def test_a_third_party_gets_the_same_system_prompt_whatever_the_cch(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Its prefix cache sees the same bytes every turn (the field's 0 % cache-hit bug)."""
    up = await FakeUpstream(OK).start(nursery)
    b = await balancer_for(up, preset="anthropic-compatible")
    async with sdk(b.url) as client:
        for cch in ("1a2b3", "ffff0"):
            await client.messages.create(
                model="claude-opus-4-6",
                max_tokens=64,
                system=system_blocks(cch),  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=NO_DEDUP,
            )
    first, second = (r.json()["system"] for r in up.received)
    assert first == second == system_blocks()[1:]

    def test_a_folded_system_message_is_not_stripped_as_the_billing_header(self) -> None:
        """The header is the top-level system's: a mid-conversation system message that
        begins the same way is the conversation's, kept when it is folded in."""
        body = body_with([{"type": "text", "text": IDENTITY}])
        body["messages"] += [
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "x-anthropic-billing-header: keep this text, it is the user's"},
            {"role": "user", "content": "go on"},
        ]
        req = fit_request_of(body)
        row = {"capabilities": {"system_messages": False, "strip_billing_header": True}}
        assert b"keep this text" in fit_request(fit_provider(**row), req, req.model).body


class TestSessionKey:
    def request(self, headers: tuple[tuple[bytes, bytes], ...], user: str | None) -> UpstreamRequest:
        body = body_with(IDENTITY)
        if user is None:
            del body["metadata"]
        else:
            body["metadata"] = {"user_id": user}
        return attrs.evolve(fit_request_of(body), headers=headers)

    def test_the_session_header_before_the_user_id(self) -> None:
        header = ((b"x-claude-code-session-id", b"4f9c-sess"),)
        assert self.request(header, "u1").session == self.request(header, "u2").session
        assert self.request(header, "u1").session != self.request((), "u1").session
        assert self.request((), "u1").session != self.request((), "u2").session
        assert self.request((), None).session is None
        assert self.request(((b"x-claude-code-session-id", b" "),), None).session is None

    def test_a_session_is_its_clients(self) -> None:
        """Another client naming the same session id has its own session: it cannot move this
        one to the provider that served it (found by an attack)."""
        header = ((b"x-claude-code-session-id", b"alice-conv"),)
        alice = attrs.evolve(self.request(header, None), client="alice")
        bob = attrs.evolve(self.request(header, None), client="bob")
        assert alice.session != bob.session
        assert (
            attrs.evolve(self.request((), "u1"), client="a").session
            != attrs.evolve(self.request((), "u1"), client="b").session
        )

    def test_a_user_id_cannot_pose_as_a_session_header(self) -> None:
        """Each kind of key has its own namespace in the router's sticky map."""
        as_header = self.request(((b"x-claude-code-session-id", b"same"),), None)
        assert as_header.session != self.request((), "same").session


async def test_the_session_header_keeps_a_conversation_on_its_provider(
    nursery: trio.Nursery, balancer_for: BalancerFactory, session_log: list[str]
) -> None:
    """Round robin would send the second turn to p1; the session header keeps it on p0, even
    with another ``metadata.user_id``. The header's value is never logged."""
    ups = [await FakeUpstream(OK).start(nursery) for _ in range(2)]
    config = {**provider_config(*ups), "routing": {"strategy": "round_robin", "sticky": True}}
    b = await balancer_for(config=config)
    session = "sess-3c1d9e0a-7f21-4b7e-9d55-1f0e2a6b8c4d"
    async with sdk(b.url) as client:
        for user in ("user_a", "user_b"):
            await client.messages.create(
                model="claude-opus-4-6",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
                metadata={"user_id": user},
                extra_headers={"X-Claude-Code-Session-Id": session, **NO_DEDUP},
            )
    assert [len(u.received) for u in ups] == [2, 0]
    assert not any(session in line for line in session_log)
