"""Configuration: TOML parsed into frozen attrs classes.

Validation is strict and happens once, at start: an unknown key is a typo until proven
otherwise, and every message names the offending key by its path (``providers[1].kind``)
so the operator can fix it without reading our source.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_balancer.protocol.pricing import Price, Rates

__all__ = [
    "DEFAULT_MODELS",
    "PASSTHROUGH",
    "ClientKey",
    "Config",
    "ConfigError",
    "HealthPolicy",
    "ProviderConfig",
    "Route",
    "ServerConfig",
    "Target",
    "Timeouts",
    "default_config",
    "load_config",
    "parse_config",
]

PASSTHROUGH = "passthrough"
PROVIDER_KINDS = ("anthropic", "openai")
STRATEGIES = ("priority", "round_robin", "weighted", "latency")
LEDGER_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
AUTH_STYLES = ("x-api-key", "bearer")

# Model ids the built-in default config lists on GET /v1/models: the ones the official SDK
# names and does not list as deprecated, newest first.
DEFAULT_MODELS = (
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-opus-5",
    "claude-sonnet-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


@attrs.frozen
class ClientKey:
    """One ``[[server.client_keys]]`` entry: who a client is, and what it may do."""

    name: str
    sha256: str
    models: tuple[str, ...] = ()  # allow-list of model globs; empty: every model
    max_concurrent: int | None = None
    requests_per_minute: int | None = None

    def __repr__(self) -> str:
        return f"ClientKey(name={self.name!r})"


@attrs.frozen
class Timeouts:
    """Per-provider deadlines, in seconds. ``None`` means no deadline."""

    connect: float = 10.0
    # Until the response headers arrive. Generous: Anthropic may queue a request under load.
    first_byte: float = 120.0
    # Between two upstream reads once the response started. Anthropic sends a ping every
    # few seconds on a live stream, so a much longer silence means the stream is dead.
    idle: float = 300.0
    # The whole response. Long agentic turns with extended thinking can run for many minutes.
    total: float | None = 3600.0


@attrs.frozen
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key: str | None  # None together with ``passthrough``: forward the client's credential
    auth: str = "x-api-key"
    passthrough: bool = False
    models: tuple[str, ...] = ()
    headers: Mapping[str, str] = attrs.field(factory=dict)
    timeouts: Timeouts = attrs.Factory(Timeouts)
    max_connections: int = 200
    max_keepalive: int = 50
    keepalive_s: float = 30.0  # how long an idle pooled connection to the provider is kept
    # Retries on this same provider, for connect errors only (nothing reached the provider,
    # so a retry cannot duplicate work). Other failures move on to the next provider.
    max_retries: int = 0
    # OpenAI-compatible providers only: map `thinking` to `reasoning_effort`, and the name of
    # the output limit field (`max_completion_tokens` for OpenAI's newest models).
    reasoning_effort: bool = False
    max_tokens_field: str = "max_tokens"

    def __repr__(self) -> str:  # never print the key
        return f"ProviderConfig(name={self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"


@attrs.frozen
class Target:
    provider: str
    model: str | None = None  # None: send the client's model unchanged
    weight: float = 1.0


@attrs.frozen
class Route:
    match: str
    targets: tuple[Target, ...]
    strategy: str = "priority"
    # Keep requests of one Claude Code session (metadata.user_id) on one provider while it
    # stays healthy: prompt caches live per provider.
    sticky: bool = False


@attrs.frozen
class RoutingConfig:
    """Defaults for routes that do not say, and for the implicit route when there are none."""

    strategy: str = "priority"
    sticky: bool = False


@attrs.frozen
class HealthPolicy:
    """How a provider's health (``policy/health.py``) answers failures; ``[health]`` sets the cooldowns."""

    base_cooldown_s: float = 1.0
    max_cooldown_s: float = 300.0
    auth_cooldown_s: float = 600.0
    # Not configurable. Cooldowns derived from backoff are multiplied by a factor in
    # [1 - jitter, 1 + jitter] so that instances and providers that failed together do not
    # all come back together.
    jitter: float = 0.2
    # Not configurable. A provider-requested wait (retry-after) longer than this is capped: we
    # would rather send one trial than park a provider for an hour on a misconfigured header.
    max_retry_after_s: float = 600.0


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    # How long running streams may go on after SIGINT/SIGTERM before they are cancelled.
    grace_period_s: float = 30.0
    # Claude Code sends whole conversations, images included; Anthropic's own limit is 32 MB.
    max_body_bytes: int = 32 * 1024 * 1024
    # Claude Code's headers are about 2 KiB; 64 KiB leaves room for any real client.
    max_header_bytes: int = 64 * 1024
    # A client that takes longer than this to send its body is holding a handler hostage.
    body_timeout_s: float = 60.0
    client_keys: tuple[ClientKey, ...] = ()
    admin_key_sha256: str | None = None
    public_metrics: bool = False  # /metrics without the admin key (for a scraper on another host)
    allow_open: bool = False  # serve clients beyond loopback without client keys
    # Without client keys, a request's Host must be a loopback name or address, or one of
    # these (a name of this machine that clients use), so DNS rebinding cannot reach us.
    allowed_hosts: tuple[str, ...] = ()
    max_concurrent: int | None = 2000  # requests in progress, all clients together
    # What one upstream may send: a response, and one SSE event. Past these it is cut off.
    max_upstream_response_bytes: int = 256 * 1024 * 1024
    max_upstream_event_bytes: int = 8 * 1024 * 1024


@attrs.frozen
class DedupConfig:
    enabled: bool = True
    cache_ttl_s: float = 60.0
    cache_max_bytes: int = 64 * 1024 * 1024
    include_max_tokens: bool = True
    finish_orphans: bool = False
    # A listener sharing a stream may fall this far behind (events and bytes buffered, and
    # seconds the others wait for it once past them) before it is cut off with an error.
    max_lag_events: int = 1024
    max_lag_bytes: int = 1024 * 1024
    max_lag_s: float = 10.0
    # A response larger than this is neither shared with late joiners nor cached: a shared
    # flight holds at most this much for replay.
    max_shared_bytes: int = 4 * 1024 * 1024


@attrs.frozen
class ClusterConfig:
    redis_url: str | None = None  # None: one instance, all state local
    instance_id: str | None = None  # default: hostname-pid
    lease_ttl_s: float = 30.0  # a crashed instance's concurrency slots free themselves after this

    def __repr__(self) -> str:
        return f"ClusterConfig(redis_url={_redact(self.redis_url or '')!r}, instance_id={self.instance_id!r})"


@attrs.frozen
class LedgerConfig:
    enabled: bool = True
    url: str = "sqlite:///~/.local/share/trio-balancer/ledger.sqlite3"
    # With a database server as the ledger: where records wait while it is unreachable.
    spill_path: str = "~/.local/share/trio-balancer/ledger-spill.sqlite3"

    def __repr__(self) -> str:  # the URL may carry a password
        return f"LedgerConfig(enabled={self.enabled}, url={_redact(self.url)!r})"


def _redact(url: str) -> str:
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


@attrs.frozen
class Config:
    server: ServerConfig
    providers: tuple[ProviderConfig, ...]
    routes: tuple[Route, ...] = ()
    routing: RoutingConfig = attrs.Factory(RoutingConfig)
    health: HealthPolicy = attrs.Factory(HealthPolicy)
    ledger: LedgerConfig = attrs.Factory(LedgerConfig)
    dedup: DedupConfig = attrs.Factory(DedupConfig)
    cluster: ClusterConfig = attrs.Factory(ClusterConfig)
    prices: tuple[Price, ...] = ()
    source: str = "<built-in default>"
    path: str | None = None  # the file it came from, for reloads

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)


def default_config() -> Config:
    """Forward everything to Anthropic with the client's own credentials."""
    return Config(
        server=ServerConfig(),
        providers=(
            ProviderConfig(
                name="anthropic",
                kind="anthropic",
                base_url="https://api.anthropic.com",
                api_key=None,
                passthrough=True,
                models=DEFAULT_MODELS,
            ),
        ),
    )


def load_config(path: str | os.PathLike[str] | None) -> Config:
    if path is None:
        return default_config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return attrs.evolve(parse_config(data, source=str(p)), path=str(p))


def parse_config(
    data: Mapping[str, Any], *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    env = os.environ if environ is None else environ
    r = _Reader(data, "", source)
    r.allow_keys("server", "providers", "routes", "routing", "health", "ledger", "prices", "dedup", "cluster")
    server = _server(r.table("server"))
    rt = r.table("routing")
    rt.allow_keys("strategy", "sticky")
    routing = RoutingConfig(
        strategy=rt.choice("strategy", STRATEGIES, "priority"), sticky=rt.get_bool("sticky", False)
    )
    h = r.table("health")
    h.allow_keys("base_cooldown_s", "max_cooldown_s", "auth_cooldown_s")
    dh = HealthPolicy()
    health = HealthPolicy(
        base_cooldown_s=h.get_float("base_cooldown_s", dh.base_cooldown_s, lo=0.001),
        max_cooldown_s=h.get_float("max_cooldown_s", dh.max_cooldown_s, lo=0.001),
        auth_cooldown_s=h.get_float("auth_cooldown_s", dh.auth_cooldown_s, lo=0.001),
    )
    providers = tuple(_provider(pr, env) for pr in r.tables("providers", required=True))
    names = [p.name for p in providers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{source}: providers[{i}].name: duplicate provider name {name!r}")
        if server.client_keys and providers[i].passthrough:
            raise ConfigError(
                f'{source}: providers[{i}].api_key: "passthrough" forwards the client\'s key, but with'
                " [[server.client_keys]] the client's key is the balancer's: give this provider its own key"
            )
    routes = tuple(_route(rr, set(names), routing) for rr in r.tables("routes"))
    lr = r.table("ledger")
    lr.allow_keys("enabled", "url", "spill_path")
    dl = LedgerConfig()
    ledger = LedgerConfig(
        enabled=lr.get_bool("enabled", dl.enabled),
        url=lr.get_str("url", dl.url),
        spill_path=lr.get_str("spill_path", dl.spill_path),
    )
    if not ledger.url.startswith(LEDGER_SCHEMES):
        raise lr.error("url", f"must start with one of {', '.join(LEDGER_SCHEMES)}")
    if ledger.url.startswith("sqlite:///") and ledger.url.removeprefix("sqlite:///") in ("", ":memory:"):
        # SQLite would take it, and every record would vanish with the process.
        raise lr.error(
            "url", "must name a file (sqlite:///path/to/ledger.sqlite3); the ledger must outlive the process"
        )
    prices = tuple(_price(pr, set(names)) for pr in r.tables("prices"))
    return Config(
        server=server, providers=providers, routes=routes, routing=routing, health=health,
        ledger=ledger, prices=prices, dedup=_dedup(r.table("dedup")), cluster=_cluster(r.table("cluster")),
        source=source,
    )  # fmt: skip


def _cluster(r: _Reader) -> ClusterConfig:
    r.allow_keys("redis_url", "instance_id", "lease_ttl_s")
    url = r.get_optional_str("redis_url")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise r.error("redis_url", "must start with redis://, rediss:// or unix://")
    return ClusterConfig(
        redis_url=url,
        instance_id=r.get_optional_str("instance_id"),
        lease_ttl_s=r.get_float("lease_ttl_s", 30.0, lo=1.0),
    )


def _dedup(r: _Reader) -> DedupConfig:
    r.allow_keys(
        "enabled",
        "cache_ttl_s",
        "cache_max_bytes",
        "include_max_tokens",
        "finish_orphans",
        "max_lag_events",
        "max_lag_bytes",
        "max_lag_s",
        "max_shared_bytes",
    )
    d = DedupConfig()
    return DedupConfig(
        enabled=r.get_bool("enabled", d.enabled),
        cache_ttl_s=r.get_float("cache_ttl_s", d.cache_ttl_s, lo=0),
        cache_max_bytes=r.get_int("cache_max_bytes", d.cache_max_bytes, lo=0),
        include_max_tokens=r.get_bool("include_max_tokens", d.include_max_tokens),
        finish_orphans=r.get_bool("finish_orphans", d.finish_orphans),
        max_lag_events=r.get_int("max_lag_events", d.max_lag_events, lo=1),
        max_lag_bytes=r.get_int("max_lag_bytes", d.max_lag_bytes, lo=1024),
        max_lag_s=r.get_float("max_lag_s", d.max_lag_s, lo=0.001),
        max_shared_bytes=r.get_int("max_shared_bytes", d.max_shared_bytes, lo=0),
    )


def _price(r: _Reader, providers: set[str]) -> Price:
    r.allow_keys("model", "provider", "input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
    provider = r.get_optional_str("provider")
    if provider is not None and provider not in providers:
        raise r.error("provider", f"no provider named {provider!r}")
    inp = r.get_float("input", lo=0)
    return Price(
        model=r.get_str("model"),
        provider=provider,
        rates=Rates(
            input=inp,
            output=r.get_float("output", lo=0),
            cache_write_5m=r.get_float("cache_write_5m", inp * 1.25, lo=0),
            cache_write_1h=r.get_float("cache_write_1h", inp * 2.0, lo=0),
            cache_read=r.get_float("cache_read", inp * 0.1, lo=0),
        ),
    )


def _server(r: _Reader) -> ServerConfig:
    r.allow_keys(
        "host", "port", "grace_period_s", "max_body_bytes", "max_header_bytes", "body_timeout_s", "client_keys",
        "admin_key_sha256", "public_metrics", "allow_open", "max_concurrent", "max_upstream_response_bytes",
        "max_upstream_event_bytes", "allowed_hosts",
    )  # fmt: skip
    d = ServerConfig()
    keys = tuple(_client_key(k) for k in r.tables("client_keys"))
    names = [k.name for k in keys]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise r.error(f"client_keys[{i}].name", f"duplicate client key name {name!r}")
    admin = r.get_optional_str("admin_key_sha256")
    if admin is not None and not _SHA256.fullmatch(admin):
        raise r.error(
            "admin_key_sha256", "must be 64 hex digits (sha256 of the key; see `trio-balancer keys new`)"
        )
    max_concurrent = (
        r.get_int("max_concurrent", 0, lo=0) if "max_concurrent" in r.names() else d.max_concurrent
    )
    return ServerConfig(
        host=r.get_str("host", d.host),
        port=r.get_int("port", d.port, lo=0, hi=65535),
        grace_period_s=r.get_float("grace_period_s", d.grace_period_s, lo=0),
        max_body_bytes=r.get_int("max_body_bytes", d.max_body_bytes, lo=1),
        max_header_bytes=r.get_int("max_header_bytes", d.max_header_bytes, lo=1024),
        body_timeout_s=r.get_float("body_timeout_s", d.body_timeout_s, lo=0.001),
        client_keys=keys,
        admin_key_sha256=admin.lower() if admin else None,
        public_metrics=r.get_bool("public_metrics", d.public_metrics),
        allow_open=r.get_bool("allow_open", d.allow_open),
        allowed_hosts=tuple(h.lower() for h in r.get_str_list("allowed_hosts")),
        max_concurrent=max_concurrent or None,
        max_upstream_response_bytes=r.get_int(
            "max_upstream_response_bytes", d.max_upstream_response_bytes, lo=1024
        ),
        max_upstream_event_bytes=r.get_int("max_upstream_event_bytes", d.max_upstream_event_bytes, lo=1024),
    )


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _client_key(r: _Reader) -> ClientKey:
    r.allow_keys("name", "sha256", "models", "max_concurrent", "requests_per_minute")
    name = r.get_str("name")
    if not name:
        raise r.error("name", "must not be empty")
    digest = r.get_str("sha256")
    if not _SHA256.fullmatch(digest):
        raise r.error("sha256", "must be 64 hex digits (sha256 of the key; see `trio-balancer keys new`)")
    return ClientKey(
        name=name,
        sha256=digest.lower(),
        models=tuple(r.get_str_list("models")),
        max_concurrent=r.get_int("max_concurrent", None, lo=1) if "max_concurrent" in r.names() else None,
        requests_per_minute=r.get_int("requests_per_minute", None, lo=1)
        if "requests_per_minute" in r.names()
        else None,
    )


def _provider(r: _Reader, env: Mapping[str, str]) -> ProviderConfig:
    r.allow_keys(
        "name", "kind", "base_url", "api_key", "api_key_env", "auth", "models", "headers",
        "timeouts", "max_connections", "max_keepalive", "keepalive_s", "max_retries", "reasoning_effort",
        "max_tokens_field",
    )  # fmt: skip
    name = r.get_str("name")
    if not name:
        raise r.error("name", "must not be empty")
    kind = r.choice("kind", PROVIDER_KINDS)
    base_url = r.get_str("base_url").rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise r.error("base_url", "must start with http:// or https://")
    key = r.get_optional_str("api_key")
    key_env = r.get_optional_str("api_key_env")
    if key is not None and key_env is not None:
        raise r.error("api_key_env", "give either api_key or api_key_env, not both")
    passthrough = key == PASSTHROUGH
    if key_env is not None:
        key = env.get(key_env)
        if not key:
            raise r.error("api_key_env", f"environment variable {key_env!r} is not set")
    elif key is None:
        raise r.error("api_key", f'missing: set api_key, api_key_env, or api_key = "{PASSTHROUGH}"')
    default_auth = "bearer" if kind == "openai" else "x-api-key"
    headers = r.table("headers")
    extra = {k: headers.get_str(k) for k in headers.names()}
    t = r.table("timeouts")
    t.allow_keys("connect", "first_byte", "idle", "total")
    dt = Timeouts()
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=base_url,
        api_key=None if passthrough else key,
        auth=r.choice("auth", AUTH_STYLES, default_auth),
        passthrough=passthrough,
        models=tuple(r.get_str_list("models")),
        headers=extra,
        timeouts=Timeouts(
            connect=t.get_float("connect", dt.connect, lo=0.001),
            first_byte=t.get_float("first_byte", dt.first_byte, lo=0.001),
            idle=t.get_float("idle", dt.idle, lo=0.001),
            total=t.get_optional_float("total", dt.total, lo=0.001),
        ),
        max_connections=r.get_int("max_connections", 200, lo=1),
        max_keepalive=r.get_int("max_keepalive", 50, lo=0),
        keepalive_s=r.get_float("keepalive_s", 30.0, lo=0),
        max_retries=r.get_int("max_retries", 0, lo=0, hi=10),
        reasoning_effort=r.get_bool("reasoning_effort", False),
        max_tokens_field=r.choice("max_tokens_field", ("max_tokens", "max_completion_tokens"), "max_tokens"),
    )


def _route(r: _Reader, providers: set[str], defaults: RoutingConfig) -> Route:
    r.allow_keys("match", "targets", "strategy", "sticky")
    match = r.get_str("match")
    targets = []
    for t in r.tables("targets", required=True):
        t.allow_keys("provider", "model", "weight")
        provider = t.get_str("provider")
        if provider not in providers:
            raise t.error("provider", f"no provider named {provider!r}")
        weight = t.get_float("weight", 1.0, lo=0.0)
        targets.append(Target(provider=provider, model=t.get_optional_str("model"), weight=weight))
    if not targets:
        raise r.error("targets", "must name at least one target")
    return Route(
        match=match,
        targets=tuple(targets),
        strategy=r.choice("strategy", STRATEGIES, defaults.strategy),
        sticky=r.get_bool("sticky", defaults.sticky),
    )


_MISSING = object()


class _Reader:
    """Typed access to one TOML table that knows its own path for error messages."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        self._data = data
        self._path = path
        self._source = source

    def error(self, key: str, message: str) -> ConfigError:
        where = f"{self._path}.{key}" if self._path else key
        return ConfigError(f"{self._source}: {where}: {message}")

    def names(self) -> list[str]:
        return list(self._data)

    def allow_keys(self, *allowed: str) -> None:
        for key in self._data:
            if key not in allowed:
                raise self.error(key, f"unknown key (expected one of: {', '.join(allowed)})")

    def _get(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise self.error(key, "missing")
            return default
        # bool is an int in Python; a port of `true` is a typo, not 1.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.error(key, f"must be {what}, not {type(value).__name__}")
        return value

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        return self._get(key, default, (str,), "a string")  # type: ignore[no-any-return]

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        return self._get(key, default, (bool,), "true or false")  # type: ignore[no-any-return]

    def get_optional_str(self, key: str) -> str | None:
        return self._get(key, None, (str,), "a string")  # type: ignore[no-any-return]

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.get_str(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
        return value

    def get_int(
        self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        value: int = self._get(key, default, (int,), "an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, f"must be between {lo} and {hi}, not {value}")
        return value

    def get_float(self, key: str, default: Any = _MISSING, *, lo: float | None = None) -> float:
        value = self._get(key, default, (int, float), "a number")
        if lo is not None and value < lo:
            raise self.error(key, f"must be at least {lo}, not {value}")
        return float(value)

    def get_optional_float(self, key: str, default: float | None, *, lo: float | None = None) -> float | None:
        if self._data.get(key) is False:  # `total = false` turns a deadline off
            return None
        return self.get_float(key, default, lo=lo) if key in self._data else default

    def get_str_list(self, key: str) -> list[str]:
        value = self._get(key, [], (list,), "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"must be a string, not {type(item).__name__}")
        return value  # type: ignore[no-any-return]

    def table(self, key: str) -> _Reader:
        value = self._get(key, {}, (dict,), "a table")
        return _Reader(value, f"{self._path}.{key}" if self._path else key, self._source)

    def tables(self, key: str, *, required: bool = False) -> list[_Reader]:
        value = self._get(key, _MISSING if required else [], (list,), "an array of tables")
        out = []
        base = f"{self._path}.{key}" if self._path else key
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(f"{self._source}: {base}[{i}]: must be a table")
            out.append(_Reader(item, f"{base}[{i}]", self._source))
        return out
