"""Failover matrix: each failure kind before commit (invisible to the client) and after (SSE error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio

from .fakes import (
    CUT,
    HANG,
    JSON_HEADERS,
    FakeUpstream,
    Pause,
    Reply,
    anthropic_error,
    anthropic_text_events,
    error_payload,
    error_reply,
    interleave,
    sse,
)
from .helpers import NO_DEDUP, PROVIDER_KEY, SONNET, Balancer, BalancerFactory, message_body, start_balancer

BODY = message_body(model=SONNET, stream=True)
GOOD = anthropic_text_events(["served ", "by ", "the ", "backup"], message_id="msg_backup")


VERTEX_NOT_FOUND = json.dumps(
    {
        "error": {
            "code": 404,
            "message": "Publisher Model `projects/p/locations/us-east5/publishers/anthropic/models/claude-x`"
            " was not found or your project does not have access to it.",
            "status": "NOT_FOUND",
        }
    }
).encode()


async def two(
    nursery: trio.Nursery, balancer_for: BalancerFactory, first: Reply, **extra: Any
) -> tuple[Balancer, FakeUpstream, FakeUpstream]:
    a = await FakeUpstream(first).start(nursery)
    b = await FakeUpstream(Reply(steps=GOOD)).start(nursery)
    return await balancer_for(a, b, **extra), a, b


async def stream_body(b: Balancer, body: dict[str, Any] | None = None) -> tuple[httpx.Response, bytes]:
    async with b.client.stream("POST", "/v1/messages", json=body or BODY, headers=NO_DEDUP) as r:
        return r, await r.aread()


async def provider_state(b: Balancer, name: str) -> dict[str, Any]:
    r = await b.client.get("/providers")
    return next(p for p in r.json()["providers"] if p["name"] == name)


BEFORE_COMMIT = {
    "http_408": error_reply(408, "timeout_error"),
    "http_409": error_reply(409, "api_error"),
    "http_429": error_reply(429, "rate_limit_error", **{"retry-after": "30"}),
    "http_500": error_reply(500, "api_error"),
    "http_502_html": Reply(
        status=502, headers=[("content-type", "text/html")], steps=[b"<h1>bad gateway</h1>"]
    ),
    "http_503": error_reply(503, "api_error"),
    "http_529": error_reply(529, "overloaded_error"),
    "http_401_provider_key": error_reply(401, "authentication_error"),
    "http_403_provider_key": error_reply(403, "permission_error"),
    "sse_overloaded_error": Reply(
        steps=[
            GOOD[0],
            sse("error", error_payload("overloaded_error", "Overloaded")),
        ]
    ),
    "sse_api_error_after_ping": Reply(steps=[*GOOD[:3], sse("error", error_payload("api_error", "x"))]),
    "ends_before_content": Reply(steps=GOOD[:3]),
    "cut_before_content": Reply(steps=[GOOD[0], CUT]),
    "cut_before_headers": Reply(steps=[CUT]),
    "garbage_then_eof": Reply(steps=[b"\x00\xff not sse at all"]),
    "hang_before_headers": Reply(hang_before_headers=True),
    "hang_after_message_start": Reply(steps=[GOOD[0], HANG]),
}


class TestBeforeCommit:
    @pytest.mark.parametrize("case", sorted(BEFORE_COMMIT))
    async def test_client_gets_the_backup_byte_identical(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, case: str
    ) -> None:
        b, a, backup = await two(
            nursery, balancer_for, BEFORE_COMMIT[case], timeouts={"first_byte": 0.5, "idle": 0.5}
        )
        r, body = await stream_body(b)
        assert r.status_code == 200
        assert body == b"".join(GOOD)
        assert len(a.received) == 1 and len(backup.received) == 1
        state = await provider_state(b, "p0")
        assert state["state"] == "cooling", state
        assert state["last_error"]
        assert PROVIDER_KEY not in json.dumps(state)

    async def test_connect_error_fails_over(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        backup = await FakeUpstream(Reply(steps=GOOD)).start(nursery)
        config = {
            "providers": [
                {"name": "down", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"},
                {"name": "up", "kind": "anthropic", "base_url": backup.url, "api_key": "k"},
            ]
        }
        b = await balancer_for(config=config)
        _, body = await stream_body(b)
        assert body == b"".join(GOOD)
        assert (await provider_state(b, "down"))["counters"]["connect"] == 1

    async def test_json_request_fails_over_too(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        payload = json.dumps({"id": "msg_2", "type": "message", "content": []}).encode()
        a = await FakeUpstream(error_reply(529, "overloaded_error")).start(nursery)
        backup = await FakeUpstream(
            Reply(headers=[("content-type", "application/json")], steps=[payload])
        ).start(nursery)
        b = await balancer_for(a, backup)
        r = await b.client.post("/v1/messages", json={**BODY, "stream": False})
        assert r.status_code == 200 and r.content == payload

    async def test_cooling_provider_is_skipped_next_time(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        b, a, backup = await two(nursery, balancer_for, error_reply(529, "overloaded_error"))
        backup.script(lambda _r: Reply(steps=GOOD))
        for _ in range(3):
            _, body = await stream_body(b)
            assert body == b"".join(GOOD)
        assert len(a.received) == 1  # only the first request paid for the failure
        assert len(backup.received) == 3

    async def test_retry_after_from_429_sets_cooldown(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        b, _, _ = await two(
            nursery, balancer_for, error_reply(429, "rate_limit_error", **{"retry-after": "42"})
        )
        await stream_body(b)
        state = await provider_state(b, "p0")
        # 42 s from the failure: measured from it, not from whenever /providers is read.
        assert 0 < state["cooldown_remaining_s"] <= 42
        assert b.app.registry is not None
        health = b.app.registry.runtimes["p0"].health
        assert health.last_error_at is not None
        assert health.cooling_until - health.last_error_at == pytest.approx(42)
        assert state["counters"]["rate_limited"] == 1

    @pytest.mark.parametrize("status", [400, 404, 413, 422])
    async def test_client_errors_are_relayed_without_failover(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, status: int
    ) -> None:
        b, _a, backup = await two(nursery, balancer_for, error_reply(status, "invalid_request_error"))
        r, body = await stream_body(b)
        assert r.status_code == status
        assert body == anthropic_error("invalid_request_error", "x")
        assert backup.received == []
        assert (await provider_state(b, "p0"))["state"] == "healthy"

    @pytest.mark.parametrize(
        "first",
        [
            error_reply(404, "not_found_error", "model: claude-sonnet-4-5"),  # Anthropic's words
            Reply(status=404, headers=list(JSON_HEADERS), steps=[VERTEX_NOT_FOUND]),  # Vertex's
            Reply(status=404, steps=[b"<html>Not Found</html>"]),  # a wrong base URL's page
        ],
    )
    async def test_a_model_this_provider_lacks_fails_over_and_leaves_health_alone(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, first: Reply
    ) -> None:
        b, _a, backup = await two(nursery, balancer_for, first)
        r, body = await stream_body(b)
        assert r.status_code == 200 and b"message_stop" in body
        assert len(backup.received) == 1
        assert (await provider_state(b, "p0"))["state"] == "healthy"

    async def test_a_model_no_provider_has_is_the_last_providers_404(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        a = await FakeUpstream(error_reply(404, "not_found_error", "model: a")).start(nursery)
        c = await FakeUpstream(error_reply(404, "not_found_error", "model: c")).start(nursery)
        b = await balancer_for(a, c)
        r, body = await stream_body(b)
        assert r.status_code == 404 and json.loads(body)["error"]["message"] == "model: c"
        assert len(a.received) == len(c.received) == 1

    async def test_overloaded_then_no_such_model_is_every_provider_failed(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        """The client should retry (the first provider may recover), not be told the model
        does not exist."""
        a = await FakeUpstream(error_reply(529, "overloaded_error")).start(nursery)
        c = await FakeUpstream(error_reply(404, "not_found_error", "model: c")).start(nursery)
        b = await balancer_for(a, c)
        r, body = await stream_body(b)
        assert r.status_code == 529 and json.loads(body)["error"]["type"] == "overloaded_error"

    async def test_sse_invalid_request_error_relayed_as_http_error(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        event = sse("error", error_payload("invalid_request_error", "prompt too long"))
        b, _, backup = await two(nursery, balancer_for, Reply(steps=[GOOD[0], event]))
        r, body = await stream_body(b)
        assert r.status_code == 400
        assert json.loads(body)["error"]["message"] == "prompt too long"
        assert backup.received == []

    async def test_passthrough_401_is_the_clients_problem(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        a = await FakeUpstream(error_reply(401, "authentication_error")).start(nursery)
        backup = await FakeUpstream(Reply(steps=GOOD)).start(nursery)
        config = {
            "providers": [
                {"name": "a", "kind": "anthropic", "base_url": u.url, "api_key": "passthrough"}
                for u in (a, backup)
            ]
        }
        config["providers"][1]["name"] = "b"
        b = await balancer_for(config=config)
        r, _ = await stream_body(b)
        assert r.status_code == 401
        assert backup.received == []
        assert (await provider_state(b, "a"))["state"] == "healthy"

    async def test_hanging_provider_abandoned_at_first_byte_timeout(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        b, a, _ = await two(
            nursery, balancer_for, Reply(hang_before_headers=True), timeouts={"first_byte": 0.3}
        )
        _, body = await stream_body(b)
        assert body == b"".join(GOOD)
        # Given up at its own first-byte timeout (not a wall-clock bound, which load could break).
        assert "no response headers within 0.3 s" in (await provider_state(b, "p0"))["last_error"]
        with trio.fail_after(2):
            await a.received[0].disconnected.wait()

    async def test_connect_retries_on_the_same_provider(self, balancer_for: BalancerFactory) -> None:
        config = {
            "providers": [
                {
                    "name": "down",
                    "kind": "anthropic",
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "k",
                    "max_retries": 2,
                }
            ]
        }
        b = await balancer_for(config=config)
        with structlog.testing.capture_logs() as logs:
            r = await b.client.post("/v1/messages", json=BODY)
        assert r.status_code == 502
        assert [e["attempt"] for e in logs if e["event"] == "upstream.retry"] == [1, 2]


class TestAllDown:
    async def test_every_provider_failing_gives_529_without_secrets(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        a = await FakeUpstream(error_reply(529, "overloaded_error")).start(nursery)
        c = await FakeUpstream(error_reply(500, "api_error")).start(nursery)
        b = await balancer_for(a, c)
        r = await b.client.post("/v1/messages", json=BODY)
        assert r.status_code == 529
        err = r.json()["error"]
        assert err["type"] == "overloaded_error"
        assert "p0" in err["message"] and "p1" in err["message"]
        assert PROVIDER_KEY not in r.text
        assert int(r.headers["retry-after"]) >= 1

    async def test_all_cooling_still_tries_the_soonest(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        a = await FakeUpstream(
            [error_reply(429, "rate_limit_error", **{"retry-after": "60"}), Reply(steps=GOOD)]
        ).start(nursery)
        c = await FakeUpstream(error_reply(429, "rate_limit_error", **{"retry-after": "120"})).start(nursery)
        b = await balancer_for(a, c)
        r1 = await b.client.post("/v1/messages", json=BODY)
        assert r1.status_code == 529
        _, body = await stream_body(b)  # both cooling: p0 recovers first and is tried
        assert body == b"".join(GOOD)
        assert len(c.received) == 1

    async def test_single_provider_error_relayed_as_sent(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(error_reply(529, "overloaded_error"))
        r = await balancer.client.post("/v1/messages", json=BODY)
        assert r.status_code == 529 and r.content == anthropic_error("overloaded_error", "x")


class TestAfterCommit:
    async def assert_error_ends_stream(self, body: bytes, prefix: bytes, error_type: str) -> None:
        assert body.startswith(prefix)
        rest = body[len(prefix) :]
        assert rest.startswith(b"event: error\ndata: ")
        assert rest.endswith(b"\n\n") and rest.count(b"event:") == 1
        assert json.loads(rest.split(b"data: ", 1)[1])["error"]["type"] == error_type
        assert b"message_stop" not in body

    async def test_cut_after_content(self, nursery: trio.Nursery, balancer_for: BalancerFactory) -> None:
        b, _, backup = await two(nursery, balancer_for, Reply(steps=[*GOOD[:5], CUT]))
        r, body = await stream_body(b)
        assert r.status_code == 200
        await self.assert_error_ends_stream(body, b"".join(GOOD[:5]), "api_error")
        assert backup.received == []
        assert (await provider_state(b, "p0"))["state"] == "cooling"

    async def test_idle_timeout_after_content(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        b, _, _ = await two(nursery, balancer_for, Reply(steps=[*GOOD[:5], HANG]), timeouts={"idle": 0.3})
        _, body = await stream_body(b)
        await self.assert_error_ends_stream(body, b"".join(GOOD[:5]), "timeout_error")
        assert (await provider_state(b, "p0"))["counters"]["timeout"] == 1

    async def test_providers_error_event_after_content_is_relayed_once(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        err = sse("error", error_payload("overloaded_error", "Overloaded"))
        b, _, _ = await two(nursery, balancer_for, Reply(steps=[*GOOD[:5], err]))
        _, body = await stream_body(b)
        assert body == b"".join(GOOD[:5]) + err
        assert (await provider_state(b, "p0"))["counters"]["overloaded"] == 1

    async def test_total_timeout(self, nursery: trio.Nursery, balancer_for: BalancerFactory) -> None:
        slow = interleave(anthropic_text_events([f"t{i}" for i in range(40)]), 0.05)
        b, _, _ = await two(nursery, balancer_for, Reply(steps=slow), timeouts={"total": 0.6})
        _, body = await stream_body(b)
        assert b"content_block_delta" in body
        assert body.count(b"event: error") == 1 and b"timeout_error" in body


class TestOperators:
    async def test_reset_clears_cooldown(self, nursery: trio.Nursery, balancer_for: BalancerFactory) -> None:
        b, _, _ = await two(nursery, balancer_for, error_reply(500, "api_error"))
        await stream_body(b)
        assert (await provider_state(b, "p0"))["state"] == "cooling"
        r = await b.client.post("/providers/p0/reset")
        assert r.status_code == 200
        assert (await provider_state(b, "p0"))["state"] == "healthy"
        assert (await b.client.post("/providers/nope/reset")).status_code == 404
        assert (await b.client.get("/providers/p0/reset")).status_code == 405

    async def test_reload_keeps_health_of_unchanged_providers(
        self, nursery: trio.Nursery, tmp_path: Path
    ) -> None:
        from trio_balancer.config import load_config

        a = await FakeUpstream(error_reply(500, "api_error")).start(nursery)
        c = await FakeUpstream(Reply(steps=GOOD)).start(nursery)
        d = await FakeUpstream(Reply(steps=GOOD)).start(nursery)
        path = tmp_path / "b.toml"

        def write(*providers: tuple[str, FakeUpstream]) -> None:
            path.write_text(
                "".join(
                    f'[[providers]]\nname = "{n}"\nkind = "anthropic"\nbase_url = "{u.url}"\napi_key = "k"\n'
                    for n, u in providers
                )
            )

        write(("a", a), ("c", c))
        b = await start_balancer(nursery, load_config(path))
        async with b.client:
            await self.check_reload(b, path, write, a, d)

    async def check_reload(
        self, b: Balancer, path: Path, write: Any, a: FakeUpstream, d: FakeUpstream
    ) -> None:
        await stream_body(b)
        assert (await provider_state(b, "a"))["state"] == "cooling"
        write(("a", a), ("d", d))
        r = await b.client.post("/admin/reload")
        assert r.status_code == 200, r.text
        assert r.json()["replaced"] == ["c"]
        assert (await provider_state(b, "a"))["state"] == "cooling"  # kept
        _, body = await stream_body(b)
        assert body == b"".join(GOOD) and len(d.received) == 1

        path.write_text("[[providers]]\nkind = 'nope'\n")
        r = await b.client.post("/admin/reload")
        assert r.status_code == 400 and "not reloaded" in r.json()["error"]["message"]
        assert [p["name"] for p in (await b.client.get("/providers")).json()["providers"]] == ["a", "d"]

    async def test_reload_without_file(self, balancer: Balancer) -> None:
        r = await balancer.client.post("/admin/reload")
        assert r.status_code == 400


async def test_stream_in_flight_survives_reload_that_removes_its_provider(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    from trio_balancer.config import load_config

    slow_events = anthropic_text_events([f"w{i} " for i in range(10)])
    mid_answer = Pause()  # the stream is still running when its provider is removed
    old = await FakeUpstream(Reply(steps=[*slow_events[:5], mid_answer, *slow_events[5:]])).start(nursery)
    new = await FakeUpstream(Reply(steps=GOOD)).start(nursery)
    path = tmp_path / "b.toml"
    path.write_text(
        f'[[providers]]\nname = "old"\nkind = "anthropic"\nbase_url = "{old.url}"\napi_key = "k"\n'
    )
    b = await start_balancer(nursery, load_config(path))
    async with b.client:
        assert b.app.registry is not None
        old_runtime = b.app.registry.runtimes["old"]
        async with b.client.stream("POST", "/v1/messages", json=BODY, headers=NO_DEDUP) as r:
            chunks = []
            async for chunk in r.aiter_raw():
                chunks.append(chunk)
                if not mid_answer.released.is_set():
                    await mid_answer.wait_reached()
                    path.write_text(
                        f'[[providers]]\nname = "new"\nkind = "anthropic"\nbase_url = "{new.url}"\napi_key = "k"\n'
                    )
                    assert (await b.client.post("/admin/reload")).json()["replaced"] == ["old"]
                    assert not old_runtime.is_closed  # still in use by this stream
                    mid_answer.release()
        assert b"".join(chunks) == b"".join(slow_events)
        _, body = await stream_body(b)
        assert body == b"".join(GOOD)
        await b.wait_idle()
        with trio.fail_after(2):
            await old_runtime.close_when_unused()
        assert old_runtime.is_closed
