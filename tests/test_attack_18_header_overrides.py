"""Attack 18: a provider's configured ``headers`` replacing the request's own."""

from __future__ import annotations

import json

import pytest
import trio

from trio_balancer.config import ConfigError, parse_config
from trio_balancer.upstream.headers import request_headers

from .fakes import JSON_HEADERS, FakeUpstream, Reply, anthropic_message
from .helpers import NO_DEDUP, PROVIDER_KEY, BalancerFactory, message_body

CLIENT = [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]


def provider(kind: str, headers: dict[str, str]):
    row = {
        "name": "p",
        "kind": kind,
        "base_url": "http://127.0.0.1:1",
        "api_key": PROVIDER_KEY,
        "headers": headers,
    }
    return parse_config({"providers": [row]}).providers[0]


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_two_config_keys_differing_in_case_do_not_send_the_header_twice(kind: str) -> None:
    """TOML keys are case-sensitive, header names are not: either the config refuses the
    pair or one line is sent; never two (what the replace-not-append change is for)."""
    try:
        p = provider(kind, {"Anthropic-Version": "2023-06-01", "anthropic-version": "2099-01-01"})
    except ConfigError:
        return
    names = [n for n, _ in request_headers(CLIENT, p)]
    assert names.count(b"anthropic-version") == 1, names


def test_an_accept_encoding_override_is_refused_at_load() -> None:
    """The balancer asks for identity encoding itself (bodies stay byte-exact and readable)."""
    with pytest.raises(ConfigError, match="Accept-Encoding: is the balancer's to set"):
        provider("anthropic", {"Accept-Encoding": "gzip"})


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding", "Connection"])
def test_a_framing_header_in_a_providers_headers_is_refused_at_load(name: str) -> None:
    """HOP_BY_HOP is dropped from the client's headers, but a provider's ``headers`` may set
    any of them and they are sent verbatim."""
    with pytest.raises(ConfigError):
        provider("anthropic", {name: "3" if name == "Content-Length" else "x"})


async def test_a_content_length_override_is_refused_or_harmless(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """With ``headers = {Content-Length = "2"}`` accepted at load, every request crashes the
    flight in h11 (LocalProtocolError: too much data): a 500 "internal error", no failover."""
    ok = Reply(headers=JSON_HEADERS, steps=[json.dumps(anthropic_message("ok")).encode()])
    up = await FakeUpstream(ok).start(nursery)
    config = {
        "providers": [
            {
                "name": "p0",
                "kind": "anthropic",
                "base_url": up.url,
                "api_key": PROVIDER_KEY,
                "headers": {"Content-Length": "2"},
            }
        ]
    }
    try:
        b = await balancer_for(config=config)
    except ConfigError:
        return
    with trio.move_on_after(5):
        r = await b.client.post("/v1/messages", json=message_body(stream=False), headers=NO_DEDUP)
    # The client should get the provider's answer to the request it sent.
    assert r.status_code == 200, r.text
    assert len(up.received) <= 1 and all(len(r.body) > 2 for r in up.received), [r.body for r in up.received]


async def test_a_header_value_with_outer_spaces_is_refused_or_trimmed_not_a_dead_provider(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """Config accepts ``" padded "`` (printable ASCII); h11 then refuses to send it, every
    request to the provider fails with LocalProtocolError (a provider fault: cooldown)."""
    ok = Reply(headers=JSON_HEADERS, steps=[json.dumps(anthropic_message("ok")).encode()])
    up = await FakeUpstream(ok).start(nursery)
    row = {"name": "p0", "kind": "anthropic", "base_url": up.url, "api_key": PROVIDER_KEY,
           "headers": {"X-Custom": " padded "}}  # fmt: skip
    try:
        b = await balancer_for(config={"providers": [row]})
    except ConfigError:
        return
    r = await b.client.post("/v1/messages", json=message_body(stream=False), headers=NO_DEDUP)
    assert r.status_code == 200, r.text
