"""Config loading: valid files parse into the contract's shape; bad ones name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_balancer.config import ConfigError, Timeouts, default_config, load_config, parse_config
from trio_balancer.policy.routing import Router, listed_models

from .helpers import views

EXAMPLE = """
[server]
host = "127.0.0.1"
port = 8787

[[providers]]
name = "main"
kind = "anthropic"
base_url = "https://api.anthropic.com/"
api_key = "sk-ant-example"
auth = "x-api-key"

[[providers]]
name = "backup"
kind = "anthropic"
base_url = "https://backup.example.com/api/anthropic"
api_key_env = "BACKUP_KEY"
auth = "bearer"
timeouts = { first_byte = 30, total = false }

[[routes]]
match = "claude-*"
targets = [{ provider = "main", model = "claude-sonnet-4-6" }, { provider = "backup" }]
"""


def test_example_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_KEY", "sk-backup")
    path = tmp_path / "balancer.toml"
    path.write_text(EXAMPLE)
    c = load_config(path)
    assert c.server.port == 8787
    main, backup = c.providers
    assert main.base_url == "https://api.anthropic.com"  # trailing slash dropped
    assert main.api_key == "sk-ant-example" and main.auth == "x-api-key"
    assert backup.api_key == "sk-backup" and backup.auth == "bearer"
    assert backup.timeouts == Timeouts(first_byte=30.0, total=None)
    attempts = Router(c).plan("claude-haiku-4-5", views(c), now=0.0)
    assert [(a.provider.name, a.model) for a in attempts] == [
        ("main", "claude-sonnet-4-6"),
        ("backup", "claude-haiku-4-5"),
    ]


def test_repr_hides_keys() -> None:
    c = parse_config(
        {"providers": [{"name": "a", "kind": "anthropic", "base_url": "http://x", "api_key": "sk-hidden-1"}]}
    )
    assert "sk-hidden-1" not in repr(c)


def test_no_routes_means_every_provider_in_order() -> None:
    c = parse_config(
        {
            "providers": [
                {"name": n, "kind": "anthropic", "base_url": "http://x", "api_key": "k"} for n in "abc"
            ]
        }
    )
    assert [(a.provider.name, a.model) for a in Router(c).plan("anything", views(c), now=0.0)] == [
        ("a", "anything"),
        ("b", "anything"),
        ("c", "anything"),
    ]


def test_default_config_is_anthropic_passthrough() -> None:
    c = default_config()
    (p,) = c.providers
    assert p.base_url == "https://api.anthropic.com" and p.passthrough and p.api_key is None
    assert listed_models(c)


GOOD = {"name": "a", "kind": "anthropic", "base_url": "http://x", "api_key": "k"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "providers: missing"),
        (
            {"providers": [{**GOOD, "kind": "azure"}]},
            "providers[0].kind: must be one of 'anthropic', 'openai', 'bedrock', 'vertex', 'gemini'",
        ),
        (
            {"providers": [{"name": "b", "kind": "bedrock"}]},
            "providers[0].region: missing: kind 'bedrock' needs an AWS region",
        ),
        (
            {"providers": [{"name": "b", "kind": "bedrock", "region": "us-east-1", "api_key": "k"}]},
            "providers[0].api_key: kind 'bedrock' signs with AWS credentials",
        ),
        (
            {"providers": [{"name": "b", "kind": "bedrock", "region": "us east"}]},
            "providers[0].region: must be a region name",
        ),
        (
            {"providers": [{"name": "v", "kind": "vertex", "region": "global"}]},
            "providers[0].project: missing: kind 'vertex' needs the Google Cloud project id",
        ),
        (
            {
                "providers": [
                    {"name": "v", "kind": "vertex", "project": "p", "region": "us-east5", "api_key_env": "X"}
                ]
            },
            "providers[0].api_key_env: kind 'vertex' uses Google credentials",
        ),
        (
            {"providers": [{"name": "o", "kind": "openai", "api_key": "k"}]},
            "providers[0].base_url: missing: kind 'openai' has no default endpoint",
        ),
        ({"providers": [{"name": "g", "kind": "gemini"}]}, "providers[0].api_key: missing"),
        ({"providers": [{**GOOD, "nmae": "typo"}]}, "providers[0].nmae: unknown key"),
        ({"providers": [GOOD, GOOD]}, "providers[1].name: duplicate provider name 'a'"),
        ({"providers": [{**GOOD, "base_url": "ftp://x"}]}, "providers[0].base_url: must start with http"),
        ({"providers": [{k: v for k, v in GOOD.items() if k != "api_key"}]}, "providers[0].api_key: missing"),
        ({"providers": [{**GOOD, "api_key_env": "X"}]}, "providers[0].api_key_env: give either"),
        (
            {
                "providers": [
                    {**{k: v for k, v in GOOD.items() if k != "api_key"}, "api_key_env": "NOPE_NOT_SET"}
                ]
            },
            "providers[0].api_key_env: environment variable 'NOPE_NOT_SET' is not set",
        ),
        ({"providers": [{**GOOD, "auth": "basic"}]}, "providers[0].auth: must be one of"),
        ({"providers": [{**GOOD, "timeouts": {"idle": -1}}]}, "providers[0].timeouts.idle: must be at least"),
        ({"providers": [{**GOOD, "timeouts": {"idel": 3}}]}, "providers[0].timeouts.idel: unknown key"),
        ({"providers": [{**GOOD, "models": ["a", 3]}]}, "providers[0].models[1]: must be a string"),
        ({"server": {"port": 70000}, "providers": [GOOD]}, "server.port: must be between 0 and 65535"),
        ({"server": {"port": True}, "providers": [GOOD]}, "server.port: must be an integer, not bool"),
        (
            {"providers": [GOOD], "routes": [{"match": "*", "targets": [{"provider": "b"}]}]},
            "routes[0].targets[0].provider: no provider named 'b'",
        ),
        (
            {"providers": [GOOD], "routes": [{"match": "*", "targets": []}]},
            "routes[0].targets: must name at least one",
        ),
        ({"providers": [GOOD], "extra": 1}, "extra: unknown key"),
        ({"providers": "nope"}, "providers: must be an array of tables"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="b.toml", environ={})
    assert f"b.toml: {message}" in str(info.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"providers": [GOOD], "extra": 1},
            "extra: unknown key (expected one of: server, providers, routes, routing, health, ledger, prices,"
            " dedup, cluster, alerts)",
        ),
        (
            {"providers": [{**GOOD, "nmae": "typo"}]},
            "providers[0].nmae: unknown key (expected one of: name, kind, region, project, profile,"
            " inference_profile, service_account_file, base_url, api_key, api_key_env, auth,"
            " models, headers, timeouts, max_connections, max_keepalive, keepalive_s, max_retries,"
            " reasoning_effort, max_tokens_field, preset, capabilities)",
        ),
        (
            {"server": {"hots": "x"}, "providers": [GOOD]},
            "server.hots: unknown key (expected one of: host, port, grace_period_s, max_body_bytes,"
            " max_header_bytes, body_timeout_s, client_keys, admin_key_sha256, public_metrics, allow_open,"
            " max_concurrent, max_upstream_response_bytes, max_upstream_event_bytes, allowed_hosts,"
            " workers, budget_timezone, budget_sync_s)",
        ),
        (
            {"health": {"jitter": 0.5}, "providers": [GOOD]},
            "health.jitter: unknown key (expected one of: base_cooldown_s, max_cooldown_s, auth_cooldown_s)",
        ),
        (
            {"providers": [GOOD], "prices": [{"model": "m", "input": 1, "output": 2, "cache": 1}]},
            "prices[0].cache: unknown key (expected one of: model, provider, input, output, cache_write_5m,"
            " cache_write_1h, cache_read)",
        ),
        (
            {"server": {"max_concurrent": -1}, "providers": [GOOD]},
            "server.max_concurrent: must be between 0 and None",
        ),
        (
            {"providers": [GOOD], "routes": [{"match": "*", "targets": [{"provider": "a", "weight": -1}]}]},
            "routes[0].targets[0].weight: must be at least 0.0, not -1",
        ),
        ({"providers": [GOOD], "ledger": {"url": "sqlite:///:memory:"}}, "ledger.url: must name a file"),
        (
            {
                "providers": [{**GOOD, "api_key": "passthrough"}],
                "server": {"client_keys": [{"name": "k", "sha256": "a" * 64}]},
            },
            'providers[0].api_key: "passthrough" forwards the client\'s key',
        ),
    ],
)
def test_bad_config_messages_in_full(data: dict[str, Any], message: str) -> None:
    """The allowed keys are listed in the schema's order; limits are printed as written."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="b.toml", environ={})
    assert str(info.value).startswith(f"b.toml: {message}")


def test_defaults_that_depend_on_other_keys() -> None:
    """Auth follows the kind, routes follow [routing], cache prices follow the input price."""
    c = parse_config(
        {
            "server": {"max_concurrent": 0, "allowed_hosts": ["Box.LAN"], "admin_key_sha256": "A" * 64},
            "providers": [{**GOOD, "kind": "openai"}, {**GOOD, "name": "b", "api_key": "passthrough"}],
            "routing": {"strategy": "latency", "sticky": True},
            "routes": [
                {"match": "*", "targets": [{"provider": "a"}]},
                {"match": "x", "strategy": "weighted", "targets": [{"provider": "b"}]},
            ],
            "prices": [{"model": "m", "provider": "a", "input": 2, "output": 3}],
        }
    )
    assert c.server.max_concurrent is None and c.server.allowed_hosts == ("box.lan",)
    assert c.server.admin_key_sha256 == "a" * 64
    a, b = c.providers
    assert a.auth == "bearer" and a.api_key == "k" and not a.passthrough
    assert b.auth == "x-api-key" and b.api_key is None and b.passthrough
    assert [(r.strategy, r.sticky) for r in c.routes] == [("latency", True), ("weighted", True)]
    (price,) = c.prices
    assert (price.model, price.provider) == ("m", "a")
    assert attrs.astuple(price.rates) == (2.0, 3.0, 2.5, 4.0, 0.2)
    assert c.health.jitter == 0.2  # not a [health] key, but the same class


def test_gemini_needs_no_extra_and_defaults_to_googles_endpoint() -> None:
    (g,) = parse_config({"providers": [{"name": "g", "kind": "gemini", "api_key": "k"}]}).providers
    assert g.base_url == "https://generativelanguage.googleapis.com" and g.api_key == "k"
    assert g.capabilities.schema_dialect == "gemini" and g.capabilities.count_tokens
