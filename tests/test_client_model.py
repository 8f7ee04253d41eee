"""A renamed target's answer carries the model the client asked for (``[routing]
show_upstream_model`` shows the provider's); an unrenamed answer is the provider's bytes."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from trio_balancer.config import ConfigError, parse_config

from .fakes import JSON_HEADERS, FakeUpstream, Reply, anthropic_message, anthropic_text_events
from .helpers import CLIENT_KEY, PROVIDER_KEY, SONNET, BalancerFactory, message_body

UPSTREAM_MODEL = "glm-4.6"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}


def _config(upstream: FakeUpstream, *, rename: bool = True, show: bool | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"provider": "a", **({"model": UPSTREAM_MODEL} if rename else {})}
    config: dict[str, Any] = {
        "providers": [{"name": "a", "kind": "anthropic", "base_url": upstream.url, "api_key": PROVIDER_KEY}],
        "routes": [{"match": "claude-*", "targets": [target]}],
        "dedup": {"enabled": False},
    }
    if show is not None:
        config["routing"] = {"show_upstream_model": show}
    return config


def _sdk(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)


@pytest.mark.parametrize(("show", "seen"), [(None, SONNET), (False, SONNET), (True, UPSTREAM_MODEL)])
async def test_stream_message_start(
    upstream: FakeUpstream, balancer_for: BalancerFactory, show: bool | None, seen: str
) -> None:
    """The SDK's stream, from message_start, names the client's model unless told otherwise."""
    b = await balancer_for(config=_config(upstream, show=show))
    upstream.script(Reply(steps=anthropic_text_events(["hi", " there"], model=UPSTREAM_MODEL)))
    async with (
        _sdk(b.url) as client,
        client.messages.stream(
            model=SONNET, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert upstream.received[0].json()["model"] == UPSTREAM_MODEL
    assert final.model == seen
    assert final.content[0].text == "hi there"  # type: ignore[union-attr]


@pytest.mark.parametrize(("show", "seen"), [(None, SONNET), (True, UPSTREAM_MODEL)])
async def test_json_message(
    upstream: FakeUpstream, balancer_for: BalancerFactory, show: bool | None, seen: str
) -> None:
    """A JSON answer's ``model`` is the client's too, the rest of its bytes the provider's."""
    b = await balancer_for(config=_config(upstream, show=show))
    sent = json.dumps(anthropic_message("hello", model=UPSTREAM_MODEL), indent=2).encode()
    upstream.script(Reply(headers=list(JSON_HEADERS), steps=[sent]))
    async with _sdk(b.url) as client:
        message = await client.messages.create(
            model=SONNET, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.model == seen
    r = await b.client.post("/v1/messages", json=message_body(model=SONNET), headers=HEADERS)
    assert r.content == sent.replace(f'"{UPSTREAM_MODEL}"'.encode(), f'"{seen}"'.encode())


async def test_unrenamed_passthrough_is_byte_identical(
    upstream: FakeUpstream, balancer_for: BalancerFactory
) -> None:
    """No rename, nothing rewritten: even a provider reporting another model name is relayed as sent."""
    b = await balancer_for(config=_config(upstream, rename=False))
    events = anthropic_text_events(["ok"], model="claude-sonnet-4-6-20990101")
    upstream.script(Reply(steps=events))
    async with b.client.stream(
        "POST", "/v1/messages", json=message_body(model=SONNET, stream=True), headers=HEADERS
    ) as r:
        body = await r.aread()
    assert body == b"".join(events)
    sent = json.dumps(anthropic_message("hi", model="claude-sonnet-4-6-20990101")).encode()
    upstream.script(Reply(headers=list(JSON_HEADERS), steps=[sent]))
    r2 = await b.client.post("/v1/messages", json=message_body(model=SONNET), headers=HEADERS)
    assert r2.content == sent


async def test_renamed_stream_changes_only_the_model(
    upstream: FakeUpstream, balancer_for: BalancerFactory
) -> None:
    """The renamed stream is the provider's bytes but for the model value in message_start."""
    b = await balancer_for(config=_config(upstream))
    events = anthropic_text_events(["ok", "!"], model=UPSTREAM_MODEL)
    upstream.script(Reply(steps=events))
    async with b.client.stream(
        "POST", "/v1/messages", json=message_body(model=SONNET, stream=True), headers=HEADERS
    ) as r:
        body = await r.aread()
    want = b"".join(events).replace(f'"model":"{UPSTREAM_MODEL}"'.encode(), f'"model":"{SONNET}"'.encode(), 1)
    assert want != b"".join(events)
    assert body == want


def test_show_upstream_model_is_a_routing_key_only() -> None:
    """``[routing] show_upstream_model`` holds for every route; a route cannot set it (yet)."""
    provider = {"name": "a", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": PROVIDER_KEY}
    route = {"match": "claude-*", "targets": [{"provider": "a", "model": UPSTREAM_MODEL}]}
    config = parse_config(
        {"providers": [provider], "routes": [route], "routing": {"show_upstream_model": True}}
    )
    assert config.routing.show_upstream_model is True
    assert parse_config({"providers": [provider]}).routing.show_upstream_model is False
    with pytest.raises(ConfigError, match="show_upstream_model"):
        parse_config({"providers": [provider], "routes": [{**route, "show_upstream_model": True}]})
