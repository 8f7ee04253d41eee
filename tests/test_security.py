"""Client keys, admin access and limits: never an open relay, never a leaked key."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trio_balancer.app.asgi import create_app
from trio_balancer.cli import main
from trio_balancer.config import ConfigError, parse_config
from trio_balancer.policy.auth import KeyRing, new_key
from trio_balancer.policy.limits import Limiter

from .asgi_driver import call, running
from .browser import dump_dom, require_chromium
from .fakes import (
    JSON_HEADERS,
    FakeUpstream,
    Pause,
    Reply,
    anthropic_error,
    anthropic_text_events,
    error_payload,
    error_reply,
    interleave,
)
from .helpers import PROVIDER_KEY, BalancerFactory, assert_error, message_body, wait_until

ALICE, ALICE_SHA = new_key()
BOB, BOB_SHA = new_key()
ADMIN, ADMIN_SHA = new_key()
BODY = message_body(max_tokens=8)


def keyed(upstream: FakeUpstream, **server: Any) -> dict[str, Any]:
    return {
        "server": {
            "client_keys": [
                {
                    "name": "alice",
                    "sha256": ALICE_SHA,
                    "models": ["claude-opus-*"],
                    "max_concurrent": 2,
                    "requests_per_minute": 600,
                },
                {"name": "bob", "sha256": BOB_SHA, "requests_per_minute": 3},
            ],
            **server,
        },
        "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}],
    }


class TestClientKeys:
    async def test_keys_required_and_checked(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        b = await balancer_for(config=keyed(upstream))
        for headers in (
            {},
            {"x-api-key": "tb-wrong"},
            {"authorization": "Bearer tb-wrong"},
            {"authorization": "Basic xyz"},
        ):
            r = await b.client.post("/v1/messages", json=BODY, headers=headers)
            assert_error(r, 401, "authentication_error")
        assert upstream.received == []
        assert (
            await b.client.post("/v1/messages", json=BODY, headers={"x-api-key": ALICE})
        ).status_code == 200
        assert (
            await b.client.post("/v1/messages", json=BODY, headers={"authorization": f"Bearer {ALICE}"})
        ).status_code == 200
        assert (await b.client.get("/v1/models")).status_code == 401
        # The client's key never reaches a provider.
        assert all(ALICE not in json.dumps(r.headers) for r in upstream.received)

    async def test_key_name_is_the_identity(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        upstream.script(Reply(steps=interleave(anthropic_text_events(["ok"]), 0.05)))
        b = await balancer_for(config=keyed(upstream))

        async def post(key: str) -> None:
            await b.client.post("/v1/messages", json={**BODY, "stream": True}, headers={"x-api-key": key})

        async with trio.open_nursery() as n:  # same request, different clients: never shared
            n.start_soon(post, ALICE)
            n.start_soon(post, BOB)
        assert len(upstream.received) == 2
        await b.wait_idle()
        assert b.app.ledger is not None
        with trio.fail_after(5):
            await b.app.ledger.wait_written(2)
        clients = {r["client"] for r in (await b.client.get("/usage/requests")).json()["records"]}
        assert clients == {"alice", "bob"}

    async def test_model_allow_list(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        b = await balancer_for(config=keyed(upstream))
        r = await b.client.post(
            "/v1/messages", json={**BODY, "model": "claude-haiku-4-5"}, headers={"x-api-key": ALICE}
        )
        assert_error(r, 403, "permission_error")
        assert "claude-haiku-4-5" in r.json()["error"]["message"] and upstream.received == []

    def test_passthrough_with_client_keys_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="passthrough"):
            parse_config(
                {
                    "server": {"client_keys": [{"name": "a", "sha256": ALICE_SHA}]},
                    "providers": [
                        {"name": "p", "kind": "anthropic", "base_url": "http://x", "api_key": "passthrough"}
                    ],
                }
            )

    def test_constant_time_check_compares_every_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from trio_balancer.policy import auth

        ring = KeyRing(
            [auth.ClientKey(f"k{i}", hashlib.sha256(f"key{i}".encode()).hexdigest()) for i in range(5)]
        )
        calls: list[str] = []
        real = auth.hmac.compare_digest
        monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(a) or real(a, b))
        assert ring.identify([(b"x-api-key", b"key0")]).name == "k0"
        assert len(calls) == 5  # no early exit on the first match

    def test_keys_new_prints_a_working_config(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["keys", "new", "carol"]) == 0
        out = capsys.readouterr().out
        key = re.search(r"(tb-\S+)", out).group(1)  # type: ignore[union-attr]
        digest = re.search(r'sha256 = "([0-9a-f]{64})"', out).group(1)  # type: ignore[union-attr]
        assert hashlib.sha256(key.encode()).hexdigest() == digest
        assert (
            KeyRing(
                [
                    parse_config(
                        {
                            "server": {"client_keys": [{"name": "carol", "sha256": digest}]},
                            "providers": [
                                {"name": "p", "kind": "anthropic", "base_url": "http://x", "api_key": "k"}
                            ],
                        }
                    ).server.client_keys[0]
                ]
            )
            .identify([(b"x-api-key", key.encode())])
            .name
            == "carol"
        )


class TestLimits:
    async def test_concurrent_streams_per_client(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        events = anthropic_text_events([f"w{i}" for i in range(10)])
        hold = Pause()  # the streams that got a slot stay open until the others were answered
        upstream.script(lambda r: Reply(steps=[*events[:4], hold, *events[4:]]))
        b = await balancer_for(config=keyed(upstream))
        statuses: list[int] = []

        async def one(i: int) -> None:
            r = await b.client.post(
                "/v1/messages", json={**BODY, "stream": True, "max_tokens": i}, headers={"x-api-key": ALICE}
            )
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert_error(r, 429, "rate_limit_error")
                assert r.headers["retry-after"] == "1"

        async with trio.open_nursery() as n:
            for i in range(2):
                n.start_soon(one, i + 1)
                await upstream.wait_received(i + 1)  # it holds one of alice's two slots
            for i in range(2, 4):
                n.start_soon(one, i + 1)
                # Answered (refused, if the limit holds) or let through to the provider.
                await wait_until(lambda i=i: len(statuses) + len(upstream.received) == i + 1)
            hold.release()
        assert sorted(statuses) == [200, 200, 429, 429]
        assert (
            await b.client.post("/v1/messages", json=BODY, headers={"x-api-key": ALICE})
        ).status_code == 200  # slots returned

    async def test_requests_per_minute(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        b = await balancer_for(config=keyed(upstream))
        codes = [
            (
                await b.client.post(
                    "/v1/messages", json={**BODY, "max_tokens": i + 1}, headers={"x-api-key": BOB}
                )
            )
            for i in range(4)
        ]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert 1 <= int(codes[-1].headers["retry-after"]) <= 20

    def test_token_bucket_refills(self) -> None:
        lim = Limiter()
        for _ in range(3):
            lim.acquire("c", 0.0, max_concurrent=None, per_minute=3)
            lim.release("c")
        with pytest.raises(Exception, match="3 requests per minute") as info:
            lim.acquire("c", 1.0, max_concurrent=None, per_minute=3)
        assert info.value.headers["retry-after"] == "19"  # type: ignore[attr-defined]
        lim.acquire("c", 20.0, max_concurrent=None, per_minute=3)

    async def test_total_concurrency(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        events = anthropic_text_events(["a", "b"])
        hold = Pause()
        upstream.script(lambda r: Reply(steps=[*events[:4], hold, *events[4:]]))
        b = await balancer_for(
            config={
                "server": {"max_concurrent": 1},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            }
        )
        codes: list[int] = []

        async def one(i: int) -> None:
            codes.append((await b.client.post("/v1/messages", json={**BODY, "max_tokens": i})).status_code)

        async with trio.open_nursery() as n:
            n.start_soon(one, 1)
            await upstream.wait_received(1)  # it holds the one slot
            n.start_soon(one, 2)
            await wait_until(lambda: len(codes) + len(upstream.received) == 2)  # answered, or let through
            hold.release()
        assert sorted(codes) == [200, 429]

    async def test_header_size(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        b = await balancer_for(
            config={
                "server": {"max_header_bytes": 2048},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            }
        )
        r = await b.client.post("/v1/messages", json=BODY, headers={"x-padding": "x" * 4000})
        assert r.status_code == 431 and r.json()["type"] == "error"

    async def test_slow_body_times_out(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        b = await balancer_for(
            config={
                "server": {"body_timeout_s": 0.3},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            }
        )

        async def slow_body() -> AsyncIterator[bytes]:
            yield b'{"model": "m", '
            await trio.sleep(2)
            yield b'"max_tokens": 1}'

        r = await b.client.post(
            "/v1/messages", content=slow_body(), headers={"content-type": "application/json"}
        )
        assert_error(r, 408, "timeout_error")

    async def test_upstream_huge_event_is_cut_off_not_buffered(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        events = anthropic_text_events(["a", "b"])
        huge = b"event: content_block_delta\ndata: " + b"x" * (2 * 1024 * 1024)  # never ends: no blank line
        upstream.script(Reply(steps=[*events[:4], huge, *events[4:]]))
        b = await balancer_for(
            config={
                "server": {"max_upstream_event_bytes": 1024 * 1024},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            }
        )
        async with b.client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as r:
            body = await r.aread()
        assert body.startswith(b"".join(events[:4])) and body.count(b"event: error") == 1
        assert len(body) < 64 * 1024

    async def test_upstream_response_size(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        many = anthropic_text_events(["x" * 500] * 400)
        upstream.script(Reply(steps=many))
        b = await balancer_for(
            config={
                "server": {"max_upstream_response_bytes": 64 * 1024},
                "providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            }
        )
        async with b.client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as r:
            body = await r.aread()
        assert b"response larger than 65536 bytes" in body and body.count(b"event: error") == 1


# -- access from beyond loopback, through an in-memory ASGI driver ----------------------------


REMOTE = ("10.20.30.40", 5555)
LOCAL = ("127.0.0.1", 5555)


async def test_no_client_keys_means_loopback_only(tmp_path: Any) -> None:
    config = parse_config(
        {
            "ledger": {"enabled": False},
            "providers": [
                {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"}
            ],
        }
    )
    async with running(create_app(config)) as app:
        status, body = await call(app, "POST", "/v1/messages", client=REMOTE, body=json.dumps(BODY).encode())
        assert status == 403 and b"loopback" in body
        status, _ = await call(app, "GET", "/v1/models", client=REMOTE)
        assert status == 403


async def test_admin_endpoints() -> None:
    base = {
        "ledger": {"enabled": False},
        "providers": [{"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"}],
    }
    async with running(create_app(parse_config(base))) as app:
        for path in ("/providers", "/status", "/status.json", "/metrics", "/usage"):
            assert (await call(app, "GET", path, client=REMOTE))[0] == 403, path
        assert (await call(app, "GET", "/providers", client=LOCAL))[0] == 200
        assert (await call(app, "GET", "/health", client=REMOTE))[0] == 200  # liveness stays open
    cfg = parse_config({**base, "server": {"admin_key_sha256": ADMIN_SHA, "public_metrics": True}})
    async with running(create_app(cfg)) as app:
        assert (await call(app, "GET", "/providers", client=LOCAL))[0] == 401  # the key, even on loopback
        assert (
            await call(app, "GET", "/providers", client=REMOTE, headers=((b"x-api-key", ADMIN.encode()),))
        )[0] == 200
        assert (
            await call(
                app,
                "POST",
                "/admin/reload",
                client=REMOTE,
                headers=((b"authorization", b"Bearer " + ADMIN.encode()),),
            )
        )[0] == 400
        assert (await call(app, "GET", "/metrics", client=REMOTE))[0] == 200  # opened on purpose


async def test_serve_refuses_open_binding_without_keys() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "trio_balancer", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2 and b"--allow-open" in result.stderr


# -- a web page cannot use a loopback balancer ---------------------------------------------------


class TestWebPages:
    """Without client keys the balancer trusts loopback; a page in the operator's browser is on
    loopback too. Cross-site "simple" requests carry an Origin; DNS rebinding carries its own
    name in Host; neither may reach us."""

    @pytest.fixture
    def open_config(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {
            "providers": [
                {"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}
            ]
        }

    @pytest.mark.parametrize(
        "headers",
        [
            {"origin": "http://evil.example", "content-type": "text/plain"},  # the simple request
            {"origin": "http://evil.example", "content-type": "application/json"},
            {"origin": "null", "content-type": "application/json"},  # a sandboxed frame, a file:// page
            {"origin": "http://127.0.0.1.evil.example", "content-type": "application/json"},
            {"host": "evil.example", "content-type": "application/json"},  # DNS rebinding
            {"host": "evil.example:8787", "content-type": "application/json"},
            {"host": "127.0.0.1.nip.io", "content-type": "application/json"},
        ],
    )
    async def test_page_requests_are_refused(
        self,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        open_config: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["spent"])))
        b = await balancer_for(config=open_config)
        r = await b.client.post("/v1/messages", content=json.dumps(BODY), headers=headers)
        assert_error(r, 403, "permission_error")
        assert upstream.received == []  # the operator's key was not spent

    async def test_rebinding_cannot_read_usage_or_reload(
        self, balancer_for: BalancerFactory, open_config: dict[str, Any]
    ) -> None:
        b = await balancer_for(config=open_config)
        rebound = {"host": "evil.example:8787"}
        for method, path in (("GET", "/usage/requests"), ("GET", "/status.json"), ("POST", "/admin/reload"),
                             ("POST", "/providers/p/reset"), ("GET", "/metrics")):  # fmt: skip
            r = await b.client.request(method, path, headers=rebound)
            assert r.status_code == 403, (path, r.text)
            r = await b.client.request(method, path, headers={"origin": "https://evil.example"})
            assert r.status_code == 403, (path, r.text)
        assert (await b.client.get("/status.json", headers={"host": "localhost:8787"})).status_code == 200

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"host": "localhost:8787"},
            {"host": "127.0.0.1"},
            {"host": "[::1]:8787"},
            {"host": "dev.localhost:8787"},
            {"host": "127.1:8787"},  # curl http://127.1:PORT sends what it was given
            {"host": "[::ffff:127.0.0.1]:8787"},
            {"origin": "http://localhost:3000"},  # a local tool's page
            {"origin": "http://127.0.0.1:5173"},
            {"origin": "http://[::1]:8080"},
        ],
    )
    async def test_loopback_callers_are_served(
        self,
        upstream: FakeUpstream,
        balancer_for: BalancerFactory,
        open_config: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        b = await balancer_for(config=open_config)
        r = await b.client.post(
            "/v1/messages", json=BODY, headers={**headers, "referer": "http://localhost:3000/app"}
        )
        assert r.status_code == 200, r.text
        sent = dict(upstream.received[0].headers)
        assert "origin" not in sent and "referer" not in sent  # never forwarded upstream

    async def test_operator_listed_names(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        upstream.script(lambda _r: Reply(steps=anthropic_text_events(["ok"])))
        config = {
            "server": {"allowed_hosts": ["Workstation.LAN"]},
            "providers": [
                {"name": "p", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}
            ],
        }
        b = await balancer_for(config=config)
        ok = {"host": "workstation.lan:8787", "origin": "http://workstation.lan:3000"}
        assert (await b.client.post("/v1/messages", json=BODY, headers=ok)).status_code == 200
        assert (
            await b.client.post("/v1/messages", json=BODY, headers={"host": "other.lan"})
        ).status_code == 403

    async def test_post_bodies_must_be_json(self, upstream: FakeUpstream, balancer: Any) -> None:
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            None,
        ):
            headers = {"content-type": content_type} if content_type else {}
            r = await balancer.client.post("/v1/messages", content=json.dumps(BODY), headers=headers)
            assert r.status_code == 415 and r.json()["error"] == {
                "type": "invalid_request_error",
                "message": "content-type: must be application/json",
            }, r.text
        assert upstream.received == []
        ok = {"content-type": "application/json; charset=utf-8"}
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        assert (
            await balancer.client.post("/v1/messages", content=json.dumps(BODY), headers=ok)
        ).status_code == 200

    async def test_with_client_keys_the_key_is_what_counts(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        """A page cannot attach a key to a simple request; one that has the key is its holder's."""
        upstream.script(Reply(steps=anthropic_text_events(["ok"])))
        b = await balancer_for(config=keyed(upstream))
        page = {"origin": "https://app.example", "host": "balancer.example"}
        assert (await b.client.post("/v1/messages", json=BODY, headers=page)).status_code == 401
        keyed_page = {**page, "x-api-key": ALICE}
        assert (await b.client.post("/v1/messages", json=BODY, headers=keyed_page)).status_code == 200

    async def test_open_mode_checks_origin_not_host(self) -> None:
        config = parse_config(
            {
                "server": {"allow_open": True},
                "ledger": {"enabled": False},
                "providers": [
                    {"name": "p", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"}
                ],
            }
        )
        async with running(create_app(config)) as app:
            named = ((b"host", b"balancer.lan:8787"),)
            status, _ = await call(app, "GET", "/v1/models", client=REMOTE, headers=named)
            assert status == 200  # open on purpose: reached by name from the LAN
            page = ((b"origin", b"https://evil.example"),)
            status, _ = await call(app, "GET", "/v1/models", client=REMOTE, headers=page)
            assert status == 403


# -- provider error bodies cannot leak or mislead ------------------------------------------------


class TestProviderErrors:
    async def test_providers_own_auth_failure_is_a_provider_failure(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory
    ) -> None:
        leaky_401 = error_reply(401, "authentication_error", f"invalid x-api-key {PROVIDER_KEY}")
        bad = await FakeUpstream(lambda _r: leaky_401).start(nursery)
        good = await FakeUpstream(lambda _r: Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
        alone = await balancer_for(bad)
        r = await alone.client.post("/v1/messages", json=BODY)
        assert_error(r, 502, "api_error")  # never "log in again"
        assert PROVIDER_KEY not in r.text and "credentials" in r.json()["error"]["message"]
        both = await balancer_for(bad, good)
        r = await both.client.post("/v1/messages", json=BODY)
        assert r.status_code == 200  # failed over

    async def test_passthrough_auth_failure_is_the_clients(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        body = anthropic_error("authentication_error", "invalid x-api-key")
        upstream.script(error_reply(401, "authentication_error", "invalid x-api-key"))
        b = await balancer_for(config={"providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url,
                                                      "api_key": "passthrough"}]})  # fmt: skip
        r = await b.client.post(
            "/v1/messages", json=BODY, headers={"x-api-key": "sk-ant-someone-else-1234567"}
        )
        assert r.status_code == 401 and r.content == body  # their own key: theirs to fix, relayed as sent

    @pytest.mark.parametrize("kind", ["anthropic", "openai"])
    async def test_keys_in_error_text_are_scrubbed(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory, kind: str
    ) -> None:
        if kind == "openai":
            leak = {"error": {"message": f"Incorrect API key provided: {PROVIDER_KEY}. Also sk-proj-abcdefgh12345678",
                              "type": "invalid_request_error"}}  # fmt: skip
        else:
            leak = error_payload("rate_limit_error", f"slow down {PROVIDER_KEY} and sk-proj-abcdefgh12345678")
        upstream.script(Reply(status=429, headers=JSON_HEADERS, steps=[json.dumps(leak).encode()]))
        base = upstream.url + ("/v1" if kind == "openai" else "")
        b = await balancer_for(
            config={"providers": [{"name": "p", "kind": kind, "base_url": base, "api_key": PROVIDER_KEY}]}
        )
        r = await b.client.post("/v1/messages", json=BODY)
        assert_error(r, 429, "rate_limit_error")
        assert (
            PROVIDER_KEY not in r.text and "sk-proj-abcdefgh12345678" not in r.text and "[redacted]" in r.text
        )

    async def test_mid_stream_errors_are_scrubbed_and_never_the_clients_auth_error(
        self, upstream: FakeUpstream, balancer: Any
    ) -> None:
        events = anthropic_text_events(["partial"])
        for error_type in ("overloaded_error", "authentication_error"):
            error = error_payload(error_type, f"lost {PROVIDER_KEY}")
            upstream.script(
                Reply(steps=[*events[:4], f"event: error\ndata: {json.dumps(error)}\n\n".encode()])
            )
            async with balancer.client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as r:
                text = (await r.aread()).decode()
            assert PROVIDER_KEY not in text and text.count("event: error") == 1
            wanted = "api_error" if error_type == "authentication_error" else "overloaded_error"
            assert f'"type":"{wanted}"' in text.replace(" ", ""), text


async def test_a_real_browser_cannot_spend_the_key(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    balancer_for: BalancerFactory,
    tmp_path: Any,
    captured: list[dict[str, Any]],
) -> None:
    """Chromium loads a page from evil.example (mapped to 127.0.0.1 inside the browser only):
    its cross-site simple POST, and its rebound reads of /usage/requests and POST /admin/reload,
    reach the balancer and are refused; the provider is never called."""
    require_chromium()
    upstream.script(Reply(steps=anthropic_text_events(["spent"])))
    b = await balancer_for(config={"providers": [{"name": "p", "kind": "anthropic", "base_url": upstream.url,
                                                  "api_key": PROVIDER_KEY}]})  # fmt: skip
    port = b.url.rsplit(":", 1)[1]
    body = json.dumps(BODY)
    page = f"""<html><body>start<script>
    (async () => {{
      const seen = [];
      const tries = [
        ["http://127.0.0.1:{port}/v1/messages", {{method: "POST", mode: "no-cors",
          headers: {{"content-type": "text/plain"}}, body: {json.dumps(body)}}}],
        ["http://evil.example:{port}/v1/messages", {{method: "POST", mode: "no-cors",
          headers: {{"content-type": "text/plain"}}, body: {json.dumps(body)}}}],
        ["http://evil.example:{port}/usage/requests", {{mode: "no-cors"}}],
        ["http://evil.example:{port}/admin/reload", {{method: "POST", mode: "no-cors"}}],
      ];
      for (const [url, init] of tries) {{
        try {{ await fetch(url, init); seen.push("sent"); }} catch (e) {{ seen.push("error"); }}
      }}
      document.body.textContent = "done " + seen.join(",");
    }})();
    </script></body></html>""".encode()

    async def serve_page(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(page)}\r\nconnection: close\r\n\r\n"
        await stream.send_all(head.encode() + page)
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, serve_page, 0)
    evil_port = listeners[0].socket.getsockname()[1]
    dom = await dump_dom(
        f"http://evil.example:{evil_port}/", tmp_path / "profile", resolve={"evil.example": "127.0.0.1"}
    )
    assert "done" in dom, dom
    assert upstream.received == []  # the operator's key was never spent
    refused = [(e["path"], e["status"]) for e in captured if e["event"] == "request.refused"]
    assert ("/v1/messages", 403) in refused and ("/usage/requests", 403) in refused, refused
    assert ("/admin/reload", 403) in refused, refused
