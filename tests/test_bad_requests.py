"""No request can break the app for others.

A body of the wrong shape is a 400 naming the field, before any upstream call, and recorded;
a body nested too deeply is a 400 too. Independently, whatever a flight or its accounting
raises stays with its own request: the client gets an error, bystanders finish, the request
is recorded, the app keeps serving. An app that cannot serve says so on /health and ``serve``
exits non-zero. The simulator survives the same bodies.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_balancer.app import accounting, messages, records
from trio_balancer.flight.relay import Relay
from trio_balancer.protocol.validation import MAX_JSON_DEPTH, nests_deeper_than, parse_request_body

from .fakes import FakeUpstream, Pause, Reply, anthropic_text_events
from .helpers import JSON_BODY, PROVIDER_KEY, Balancer, BalancerFactory, assert_error

# (body fields, the message the client must see)
WRONG_SHAPES = [
    ({"messages": 5}, "messages: must be a list"),
    (
        {"messages": [{"role": "user", "content": [{"type": "document", "source": "JVBERi0x"}]}]},
        "messages[0].content[0].source: must be an object",
    ),
    ({"tools": [5]}, "tools[0]: must be an object"),
    ({"tools": {"name": "x"}}, "tools: must be a list"),
    ({"tools": [{"name": "t", "input_schema": "object"}]}, "tools[0].input_schema: must be an object"),
    ({"system": 5}, "system: must be a string or a list of content blocks"),
    ({"system": [{"type": "text", "text": 5}]}, "system[0].text: field required (a string)"),
    ({"messages": ["hi"]}, "messages[0]: must be an object"),
    ({"messages": [{"role": 1, "content": "hi"}]}, "messages[0].role: must be a string"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content: must be a string or a list"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]: must be an object"),
    (
        {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
        "messages[0].content[0].type: field required",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": 7}}]}
            ]
        },
        "messages[0].content[0].source.data: must be a string",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}
            ]
        },
        "messages[0].content[0].content: must be a string or a list",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "x"}]}
            ]
        },
        "messages[0].content[0].input: must be an object",
    ),
    ({"metadata": "me"}, "metadata: must be an object"),
    ({"metadata": {"user_id": 5}}, "metadata.user_id: must be a string"),
    ({"stop_sequences": "STOP"}, "stop_sequences: must be a list"),
    ({"thinking": True}, "thinking: must be an object"),
    (
        {"thinking": {"type": "enabled", "budget_tokens": "lots"}},
        "thinking.budget_tokens: must be an integer",
    ),
    ({"tool_choice": "auto"}, "tool_choice: must be an object"),
    ({"max_tokens": "64"}, "max_tokens: must be an integer"),
    ({"temperature": "hot"}, "temperature: must be a finite number"),
    ({"stream": "yes"}, "stream: must be a boolean"),
]


def nested_tool_results(levels: int) -> bytes:
    """A body with ``levels`` tool_result blocks nested in each other, as JSON text (the
    encoder itself would run out of stack on the deepest)."""
    opening = '[{"type":"tool_result","tool_use_id":"t","content":' * levels
    content = opening + '"leaf"' + "}]" * levels
    return (
        '{"model":"claude-opus-4-6","max_tokens":64,"messages":[{"role":"user","content":' + content + "}]}"
    ).encode()


JSON = {"content-type": "application/json"}


class TestShapes:
    @pytest.mark.parametrize(("fields", "message"), WRONG_SHAPES, ids=[m for _, m in WRONG_SHAPES])
    async def test_wrong_shape_is_a_400_naming_the_field(
        self, upstream: FakeUpstream, balancer: Balancer, fields: dict[str, Any], message: str
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["never"])))
        r = await balancer.client.post("/v1/messages", json={**JSON_BODY, **fields})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith(message), error
        assert upstream.received == []  # refused before any upstream call

    async def test_count_tokens_is_checked_too(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        r = await balancer.client.post("/v1/messages/count_tokens", json={**JSON_BODY, "messages": 5})
        assert r.status_code == 400 and r.json()["error"]["message"] == "messages: must be a list"
        assert upstream.received == []

    async def test_fields_only_forwarded_stay_the_providers_business(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """Unknown fields, a mid-conversation system message, block types we do not know."""
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        body = {
            **JSON_BODY,
            "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
            "output_config": {"effort": "high"},
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
                },
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "search_result", "source": "https://x", "content": 5}]},
            ],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        }
        r = await balancer.client.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        assert upstream.received[0].json() == body

    async def test_refusals_are_recorded(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        b = await balancer_for(
            config={
                "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
                "providers": [
                    {"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}
                ],
            }
        )
        for fields, _ in WRONG_SHAPES[:3]:
            assert (await b.client.post("/v1/messages", json={**JSON_BODY, **fields})).status_code == 400
        assert (
            await b.client.post("/v1/messages", content=nested_tool_results(490), headers=JSON)
        ).status_code == 400
        rows = await b.ledger_rows(4)
        assert [(r["status"], r["error_type"]) for r in rows] == [(400, "invalid_request_error")] * 4


class TestText:
    @pytest.mark.parametrize("text", ["hi\\ud800", "\\udc00", "x\\uD83D"])
    async def test_lone_surrogates_are_a_400(
        self, upstream: FakeUpstream, balancer: Balancer, text: str
    ) -> None:
        body = (
            f'{{"model":"claude-opus-4-6","max_tokens":5,"messages":[{{"role":"user","content":"{text}"}}]}}'
        )
        r = await balancer.client.post("/v1/messages", content=body.encode(), headers=JSON)
        assert r.status_code == 400 and "lone UTF-16 surrogate" in r.json()["error"]["message"], r.text
        assert upstream.received == []

    async def test_a_surrogate_pair_is_text(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        body = '{"model":"claude-opus-4-6","max_tokens":5,"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
        assert (
            await balancer.client.post("/v1/messages", content=body.encode(), headers=JSON)
        ).status_code == 200

    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
    async def test_non_finite_numbers_are_a_400(self, balancer: Balancer, literal: str) -> None:
        body = f'{{"model":"claude-opus-4-6","max_tokens":5,"temperature":{literal},"messages":[]}}'
        r = await balancer.client.post("/v1/messages", content=body.encode(), headers=JSON)
        assert r.status_code == 400 and r.json()["error"]["message"] == "temperature: must be a finite number"


class TestDepth:
    @pytest.mark.parametrize("levels", [70, 490, 5000])
    async def test_deep_nesting_is_a_400(
        self, upstream: FakeUpstream, balancer: Balancer, levels: int
    ) -> None:
        r = await balancer.client.post("/v1/messages", content=nested_tool_results(levels), headers=JSON)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == f"request body nests deeper than {MAX_JSON_DEPTH} levels"
        assert upstream.received == []

    async def test_shallow_tool_results_are_fine(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        r = await balancer.client.post("/v1/messages", content=nested_tool_results(3), headers=JSON)
        assert r.status_code == 200, r.text

    async def test_deep_but_allowed_body_goes_through(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """A tool schema nested ~120 deep is unusual but legal: it reaches the provider."""
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(60):  # two levels each: the object and its properties
            schema = {"type": "object", "properties": {"x": schema}}
        r = await balancer.client.post(
            "/v1/messages", json={**JSON_BODY, "tools": [{"name": "t", "input_schema": schema}]}
        )
        assert r.status_code == 200, r.text

    def test_depth_is_counted_exactly(self) -> None:
        for depth in (1, 2, 127, 128, 129):
            value: Any = 0
            for i in range(depth):
                value = [value] if i % 2 else {"k": value}
            assert nests_deeper_than(value, 128) == (depth > 128), depth
        assert not nests_deeper_than("scalar", 0)
        assert parse_request_body(json.dumps({"a": [[[]]]}).encode()) == {"a": [[[]]]}


class TestCrashContainment:
    async def test_accounting_crash_stays_with_its_request(
        self,
        nursery: trio.Nursery,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The issue's scenario: a flight's accounting raises after the provider answered."""
        real = accounting.request_record

        def boom(ctx: records.RequestContext, prices: Any) -> Any:
            if ctx.model == "claude-boom":
                raise TypeError("'int' object is not iterable")  # what the token estimate raised
            return real(ctx, prices)

        monkeypatch.setattr(accounting, "request_record", boom)
        events = anthropic_text_events([f"w{i}" for i in range(8)])
        mid_answer = Pause()  # the bystanders' streams run until the crash was answered
        bystanding = [*events[:4], mid_answer, *events[4:]]
        upstream.script(
            lambda r: Reply(
                steps=bystanding if r.json()["model"] != "claude-boom" else anthropic_text_events(["x"])
            )
        )
        b = await balancer_for(
            config={
                "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
                "providers": [
                    {"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}
                ],
            }
        )
        bystanders: list[bytes] = []

        async def bystander(i: int) -> None:
            body = {**JSON_BODY, "stream": True, "messages": [{"role": "user", "content": f"b{i}"}]}
            async with b.client.stream("POST", "/v1/messages", json=body) as r:
                bystanders.append(await r.aread())

        async with trio.open_nursery() as n:
            for i in range(3):
                n.start_soon(bystander, i)
            await upstream.wait_received(3)
            crash = await b.client.post("/v1/messages", json={**JSON_BODY, "model": "claude-boom"})
            mid_answer.release()
        assert crash.status_code == 200  # the answer was complete before the accounting ran
        assert len(bystanders) == 3
        assert all(body.count(b"event: message_stop") == 1 for body in bystanders), bystanders
        after = await b.client.post(
            "/v1/messages", json={**JSON_BODY, "messages": [{"role": "user", "content": "later"}]}
        )
        assert after.status_code == 200
        assert (await b.client.get("/health")).status_code == 200
        rows = await b.ledger_rows(5)
        crashed = next(r for r in rows if r["model"] == "claude-boom")
        assert crashed["error_type"] == "api_error" and crashed["priced"] is False  # flagged for a look

    async def test_flight_crash_is_an_api_error_and_the_app_goes_on(
        self, upstream: FakeUpstream, balancer: Balancer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = Relay.run

        async def broken(self: Relay, *args: Any) -> None:
            if self._converted_model == "claude-boom":
                raise KeyError("bug")
            await real(self, *args)

        monkeypatch.setattr(Relay, "run", broken)
        upstream.script(lambda _r: Reply(steps=anthropic_text_events(["ok"])))
        r = await balancer.client.post("/v1/messages", json={**JSON_BODY, "model": "claude-boom"})
        assert r.status_code >= 500 and r.json()["error"]["type"] == "api_error"
        assert (await balancer.client.post("/v1/messages", json=JSON_BODY)).status_code == 200

    async def test_handler_crash_is_an_api_error(
        self, upstream: FakeUpstream, balancer: Balancer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("bug in the dedup signature")

        monkeypatch.setattr(messages, "signature", broken)
        r = await balancer.client.post("/v1/messages", json=JSON_BODY)
        assert r.status_code == 500 and r.json()["error"] == {
            "type": "api_error",
            "message": "internal error in the balancer",
        }
        monkeypatch.undo()
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        assert (await balancer.client.post("/v1/messages", json=JSON_BODY)).status_code == 200


class TestAppFailure:
    async def test_failed_app_says_so_on_health(
        self,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A service dying (here the ledger's writer) leaves an app that cannot record: 503."""
        from trio_balancer.ledger import Ledger

        crash = trio.Event()

        async def dies(self: Ledger) -> None:
            await crash.wait()
            raise OSError("the ledger's writer died")

        monkeypatch.setattr(Ledger, "_write_until_closed", dies)
        b = await balancer_for(
            config={
                "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
                "providers": [
                    {"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}
                ],
            }
        )
        assert (await b.client.get("/health")).status_code == 200
        crash.set()
        with trio.fail_after(5):
            await b.app.failed.wait()
        health = await b.client.get("/health")
        assert health.status_code == 503 and "the ledger's writer died" in health.json()["error"]
        r = await b.client.post("/v1/messages", json=JSON_BODY)
        assert_error(r, 503, "api_error")

    def test_serve_exits_non_zero_when_the_app_fails(self, tmp_path: Path) -> None:
        config = tmp_path / "c.toml"
        config.write_text(
            f'[ledger]\nurl = "sqlite:///{tmp_path}/l.sqlite3"\n'
            '[[providers]]\nname = "p"\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9"\napi_key = "k"\n'
        )
        script = textwrap.dedent(
            f"""
            import sys, trio
            from trio_balancer.ledger import writer
            async def dies(self):
                await trio.sleep(0.5)
                raise OSError("the ledger's writer died")
            writer.Ledger._write_until_closed = dies
            from trio_balancer.cli import main
            sys.exit(main(["serve", "--config", {str(config)!r}, "--port", "0"]))
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
        err = result.stderr.decode()
        assert result.returncode == 1, err[-3000:]
        assert "stopped after a fatal error: OSError: the ledger's writer died" in err


async def test_simulator_survives_bad_bodies(sim: str) -> None:
    async with httpx.AsyncClient(base_url=sim, trust_env=False) as client:
        for body in (
            b"[1, 2]",
            b'{"model": "m", "messages": 5}',
            b"{" * 3000,
            b'{"messages": [{"content": {"x": 1}}]}',
        ):
            r = await client.post("/v1/messages", content=body)
            assert r.status_code == 400, (body[:40], r.text)
        r = await client.post("/v1/chat/completions", content=b'{"model": "m", "messages": "hi"}')
        assert r.status_code == 400
        ok = await client.post("/v1/messages", json={**JSON_BODY, "stream": False})
        assert ok.status_code == 200 and ok.json()["type"] == "message"
