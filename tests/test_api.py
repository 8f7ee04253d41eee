"""Endpoints and error shapes, and the official anthropic SDK through the balancer."""

from __future__ import annotations

import anthropic
import pytest
import trio

from .fakes import CUT, FakeUpstream, Reply, anthropic_error, anthropic_text_events, error_reply
from .helpers import CLIENT_KEY, SONNET, Balancer, BalancerFactory, assert_error, message_body

BODY = message_body(model=SONNET)


class TestClientErrors:
    async def test_invalid_json(self, balancer: Balancer) -> None:
        r = await balancer.client.post(
            "/v1/messages", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_error(r, 400, "invalid_request_error")

    @pytest.mark.parametrize(
        "body",
        [b"[]", b'{"messages": []}', b'{"model": 3}', b'{"model": ""}', b'{"model": "m", "stream": "yes"}'],
    )
    async def test_bad_fields(self, balancer: Balancer, body: bytes) -> None:
        r = await balancer.client.post(
            "/v1/messages", content=body, headers={"content-type": "application/json"}
        )
        assert_error(r, 400, "invalid_request_error")

    async def test_body_too_large(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        config = {
            "server": {"max_body_bytes": 1000},
            "providers": [{"name": "a", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
        }
        b = await balancer_for(config=config)
        r = await b.client.post("/v1/messages", json={**BODY, "pad": "x" * 2000})
        assert_error(r, 413, "request_too_large")
        assert upstream.received == []

    async def test_no_route_for_model(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        config = {
            "providers": [{"name": "a", "kind": "anthropic", "base_url": upstream.url, "api_key": "k"}],
            "routes": [{"match": "claude-*", "targets": [{"provider": "a"}]}],
        }
        b = await balancer_for(config=config)
        body = assert_error(
            await b.client.post("/v1/messages", json={**BODY, "model": "gpt-5"}), 404, "not_found_error"
        )
        assert "gpt-5" in body["error"]["message"]
        assert upstream.received == []

    async def test_unknown_endpoint_and_method(self, balancer: Balancer) -> None:
        assert_error(await balancer.client.get("/v1/nothing"), 404, "not_found_error")
        assert_error(await balancer.client.get("/v1/messages"), 405, "invalid_request_error")


class TestUpstreamErrors:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 429, 500, 529])
    async def test_anthropic_error_relayed_as_sent(
        self, upstream: FakeUpstream, balancer: Balancer, status: int
    ) -> None:
        body = anthropic_error("whatever_error", "from the provider")
        upstream.script(error_reply(status, "whatever_error", "from the provider", **{"retry-after": "7"}))
        r = await balancer.client.post("/v1/messages", json=BODY)
        if status in (401, 403):  # the provider refused the balancer's own key: a provider failure
            assert_error(r, 502, "api_error")
            return
        assert r.status_code == status
        assert r.content == body
        assert r.headers["retry-after"] == "7"

    async def test_non_anthropic_error_body_is_wrapped(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        upstream.script(
            Reply(status=502, headers=[("content-type", "text/html")], steps=[b"<html>Bad Gateway</html>"])
        )
        r = await balancer.client.post("/v1/messages", json=BODY)
        body = assert_error(r, 502, "api_error")
        # What the page says stays out of our message (it may name hosts or echo headers).
        assert body["error"]["message"] == "provider 'p0' answered HTTP 502 (text/html, 24 bytes)"
        assert r.headers["content-type"] == "application/json"

    async def test_unreachable_provider(self, balancer_for: BalancerFactory) -> None:
        config = {
            "providers": [
                {
                    "name": "gone",
                    "kind": "anthropic",
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "sk-secret-value-123456",
                }
            ]
        }
        b = await balancer_for(config=config)
        r = await b.client.post("/v1/messages", json=BODY)
        body = assert_error(r, 502, "api_error")
        assert "gone" in body["error"]["message"]
        assert "sk-secret" not in r.text

    async def test_first_byte_timeout(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        b = await balancer_for(upstream, timeouts={"first_byte": 0.3})
        upstream.script(Reply(hang_before_headers=True))
        r = await b.client.post("/v1/messages", json=BODY)
        assert_error(r, 504, "timeout_error")
        with trio.fail_after(2):
            await upstream.received[0].disconnected.wait()

    async def test_idle_timeout_mid_stream(
        self, upstream: FakeUpstream, balancer_for: BalancerFactory
    ) -> None:
        b = await balancer_for(upstream, timeouts={"idle": 0.3})
        events = anthropic_text_events(["a"])
        upstream.script(Reply(steps=[*events[:4], 5.0, *events[4:]]))
        async with b.client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as r:
            body = await r.aread()
        assert r.status_code == 200
        assert body.startswith(b"".join(events[:4]))
        assert b"event: error" in body and b"timeout_error" in body

    async def test_cut_json_body_is_an_error_not_a_short_message(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        """A non-stream body cut mid-way is held, never relayed as if whole: the client gets a 502."""
        upstream.script(
            Reply(
                headers=[("content-type", "application/json")], steps=[b'{"id": "msg_1", "content": [', CUT]
            )
        )
        r = await balancer.client.post("/v1/messages", json=BODY)
        assert_error(r, 502, "api_error")


class TestEndpoints:
    async def test_models_from_config(self, upstream: FakeUpstream, balancer_for: BalancerFactory) -> None:
        config = {
            "providers": [
                {
                    "name": "a",
                    "kind": "anthropic",
                    "base_url": upstream.url,
                    "api_key": "k",
                    "models": ["claude-sonnet-4-6", "claude-haiku-4-5", "other-model"],
                }
            ],
            "routes": [
                {"match": "claude-*", "targets": [{"provider": "a"}]},
                {"match": "my-alias", "targets": [{"provider": "a", "model": "claude-opus-4-6"}]},
            ],
        }
        b = await balancer_for(config=config)
        r = await b.client.get("/v1/models")
        assert r.status_code == 200
        ids = [m["id"] for m in r.json()["data"]]
        assert ids == ["my-alias", "claude-sonnet-4-6", "claude-haiku-4-5"]
        assert r.json()["has_more"] is False
        one = await b.client.get("/v1/models/my-alias")
        assert one.json()["type"] == "model"
        assert_error(await b.client.get("/v1/models/nope"), 404, "not_found_error")

    async def test_health(self, balancer: Balancer) -> None:
        r = await balancer.client.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"

    async def test_count_tokens_forwarded(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(
            Reply(headers=[("content-type", "application/json")], steps=[b'{"input_tokens": 42}'])
        )
        r = await balancer.client.post(
            "/v1/messages/count_tokens?beta=true",
            json={"model": "claude-sonnet-4-6", "messages": BODY["messages"]},
        )
        assert r.status_code == 200 and r.json() == {"input_tokens": 42}
        assert upstream.received[0].target == "/v1/messages/count_tokens?beta=true"


class TestOfficialSDK:
    async def test_sdk_stream_accumulates_the_providers_message(
        self, upstream: FakeUpstream, balancer: Balancer
    ) -> None:
        texts = ["Hello", ", ", "世界", " 🌍", "!"]
        upstream.script(Reply(steps=anthropic_text_events(texts, model="claude-sonnet-4-6")))
        seen: list[str] = []
        async with (
            anthropic.AsyncAnthropic(base_url=balancer.url, api_key=CLIENT_KEY, max_retries=0) as client,
            client.messages.stream(
                model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            async for text in stream.text_stream:
                seen.append(text)
            final = await stream.get_final_message()
        assert seen == texts
        assert final.id == "msg_fake_0001"
        assert final.model == "claude-sonnet-4-6"
        assert [b.type for b in final.content] == ["text"]
        assert final.content[0].text == "".join(texts)  # type: ignore[union-attr]
        assert final.stop_reason == "end_turn"
        assert final.usage.input_tokens == 12
        assert final.usage.output_tokens == max(1, sum(len(t) for t in texts) // 4)

    async def test_sdk_sees_anthropic_errors(self, upstream: FakeUpstream, balancer: Balancer) -> None:
        upstream.script(error_reply(400, "invalid_request_error", "max_tokens: too big"))
        async with anthropic.AsyncAnthropic(
            base_url=balancer.url, api_key=CLIENT_KEY, max_retries=0
        ) as client:
            with pytest.raises(anthropic.BadRequestError) as info:
                await client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=1, messages=[{"role": "user", "content": "x"}]
                )
        assert "max_tokens: too big" in str(info.value)
