"""The configuration's shape: frozen attrs classes, each key and its default written once.

Each field that is a TOML key carries in its metadata how it is read (``config/spec.py``):
the kind of value and its limits. The parser (``config/parse.py``) derives the allowed keys
and the checks from these classes, so adding a key means adding a field, nowhere else.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping

import attrs

from trio_balancer.config import spec
from trio_balancer.config.capabilities import PRESETS, Capabilities, preset_for
from trio_balancer.protocol.pricing import Price, Rates
from trio_balancer.protocol.sse import DEFAULT_MAX_EVENT_BYTES
from trio_balancer.redaction import redact_url, url_host

__all__ = [
    "AUTH_STYLES",
    "CLOUD_KINDS",
    "DEFAULT_MODELS",
    "LEDGER_SCHEMES",
    "PASSTHROUGH",
    "PROVIDER_KINDS",
    "STRATEGIES",
    "AlertsConfig",
    "ClientKey",
    "ClusterConfig",
    "Config",
    "DedupConfig",
    "HealthPolicy",
    "LedgerConfig",
    "PriceRow",
    "ProviderConfig",
    "Route",
    "RoutingConfig",
    "ServerConfig",
    "Target",
    "Timeouts",
    "TokenBudget",
    "UsdBudget",
    "When",
    "default_config",
    "missing_extra",
]

PASSTHROUGH = "passthrough"
PROVIDER_KINDS = ("anthropic", "openai", "bedrock", "vertex", "gemini")
# Kinds that sign requests with a cloud's own credentials instead of an API key, and the
# optional extra (pyproject.toml) holding the library that does it.
CLOUD_KINDS = {"bedrock": ("aws", "botocore"), "vertex": ("gcp", "google.auth")}
# Bedrock inference profiles: a geographic prefix on the model id, or none (the base id).
INFERENCE_PROFILES = ("global", "us", "eu", "apac", "jp", "au", "")
STRATEGIES = ("priority", "round_robin", "weighted", "latency")
LEDGER_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
AUTH_STYLES = ("x-api-key", "bearer")
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")

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

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _sha256_digest(value: str) -> str | None:
    if _SHA256.fullmatch(value):
        return None
    return "must be 64 hex digits (sha256 of the key; see `trio-balancer keys new`)"


def _project_id(value: str) -> str | None:
    # It becomes part of a URL path: a project id, or a domain-scoped one (example.com:project).
    if re.fullmatch(r"([a-z0-9.-]+:)?[a-z0-9]([a-z0-9-]*[a-z0-9])?", value):
        return None
    return "must be a Google Cloud project id (lowercase letters, digits, hyphens)"


def _region_name(value: str) -> str | None:
    # It becomes part of a host name.
    if re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", value):
        return None
    return "must be a region name such as us-east-1, us-east5 or global"


def _http_url(value: str) -> str | None:
    return None if value.startswith(("http://", "https://")) else "must start with http:// or https://"


def _redis_url(value: str) -> str | None:
    if value.startswith(("redis://", "rediss://", "unix://")):
        return None
    return "must start with redis://, rediss:// or unix://"


def _ledger_url(value: str) -> str | None:
    if not value.startswith(LEDGER_SCHEMES):
        return f"must start with one of {', '.join(LEDGER_SCHEMES)}"
    if value.startswith("sqlite:///") and value.removeprefix("sqlite:///") in ("", ":memory:"):
        # SQLite would take it, and every record would vanish with the process.
        return "must name a file (sqlite:///path/to/ledger.sqlite3); the ledger must outlive the process"
    return None


def _strip_slash(value: str) -> str:
    return value.rstrip("/")


def _timezone(value: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "must be an IANA time zone name (UTC, Europe/Berlin, America/New_York)"
    return None


@attrs.frozen
class UsdBudget:
    """``budget_usd = { day = 20, month = 300 }``: what a key may spend per calendar period."""

    day: float | None = attrs.field(default=None, metadata=spec.number(lo=0))
    month: float | None = attrs.field(default=None, metadata=spec.number(lo=0))


@attrs.frozen
class TokenBudget:
    """``tokens = { day = 5_000_000 }``: input + output + cache tokens per calendar period."""

    day: int | None = attrs.field(default=None, metadata=spec.integer(lo=0))
    month: int | None = attrs.field(default=None, metadata=spec.integer(lo=0))


@attrs.frozen
class ClientKey:
    """One ``[[server.client_keys]]`` entry: who a client is, and what it may do."""

    name: str = attrs.field(metadata=spec.string(check=_not_empty))
    sha256: str = attrs.field(metadata=spec.string(clean=str.lower, check=_sha256_digest))
    # Allow-list of model globs; empty: every model.
    models: tuple[str, ...] = attrs.field(default=(), metadata=spec.strings())
    max_concurrent: int | None = attrs.field(default=None, metadata=spec.integer(lo=1))
    requests_per_minute: int | None = attrs.field(default=None, metadata=spec.integer(lo=1))
    # Spend caps per calendar period in [server] budget_timezone (policy/budgets.py).
    budget_usd: UsdBudget = attrs.field(factory=UsdBudget, metadata=spec.table(UsdBudget))
    tokens: TokenBudget = attrs.field(factory=TokenBudget, metadata=spec.table(TokenBudget))

    def __repr__(self) -> str:
        return f"ClientKey(name={self.name!r})"

    @property
    def has_budget(self) -> bool:
        return any(
            v is not None
            for v in (self.budget_usd.day, self.budget_usd.month, self.tokens.day, self.tokens.month)
        )


@attrs.frozen
class Timeouts:
    """Per-provider deadlines, in seconds. ``None`` means no deadline."""

    connect: float = attrs.field(default=10.0, metadata=spec.number(lo=0.001))
    # Until the response headers arrive. Generous: Anthropic may queue a request under load.
    first_byte: float = attrs.field(default=120.0, metadata=spec.number(lo=0.001))
    # Between two upstream reads once the response started. Anthropic sends a ping every
    # few seconds on a live stream, so a much longer silence means the stream is dead.
    idle: float = attrs.field(default=300.0, metadata=spec.number(lo=0.001))
    # The whole response. Long agentic turns with extended thinking can run for many minutes.
    total: float | None = attrs.field(default=3600.0, metadata=spec.number(lo=0.001, false_is_none=True))


def _default_capabilities(provider: ProviderConfig) -> Capabilities:
    """A provider made in code (tests, the default config) gets its kind's preset too."""
    return Capabilities(
        **preset_for({"kind": provider.kind, "name": provider.name, "preset": provider.preset})
    )


def _default_base_url(provider: ProviderConfig) -> str:
    """Each kind's public endpoint; an OpenAI-compatible server has none (``problem`` says so)."""
    region = provider.region
    if provider.kind == "bedrock":
        return f"https://bedrock-runtime.{region}.amazonaws.com"
    if provider.kind == "vertex":
        # The global endpoint has no region in its host name (Vertex AI's "global" location).
        return (
            "https://aiplatform.googleapis.com"
            if region == "global"
            else f"https://{region}-aiplatform.googleapis.com"
        )
    return {
        "anthropic": "https://api.anthropic.com",
        "gemini": "https://generativelanguage.googleapis.com",
    }.get(provider.kind, "")


def _signs_itself(row: Mapping[str, object]) -> str | None:
    """Bedrock and Vertex take no API key: they sign with AWS or Google credentials."""
    kind = row.get("kind")
    if kind == "bedrock":
        return "kind 'bedrock' signs with AWS credentials (the standard chain, or `profile`), not an api_key"
    if kind == "vertex":
        return (
            "kind 'vertex' uses Google credentials (Application Default Credentials, or"
            " `service_account_file`), not an api_key"
        )
    return None


def missing_extra(kind: str) -> str | None:
    """What to install for ``kind`` when its optional library is absent, else None."""
    if kind not in CLOUD_KINDS:
        return None
    extra, module = CLOUD_KINDS[kind]
    try:
        importlib.import_module(module)
    except ImportError:
        return f"kind {kind!r} needs the [{extra}] extra: pip install 'trio-balancer[{extra}]'"
    return None


def _auth_style_for(provider: ProviderConfig) -> str:
    """OpenAI-compatible APIs take a bearer token; Anthropic's take ``x-api-key``."""
    return "bearer" if provider.kind == "openai" else "x-api-key"


@attrs.frozen
class ProviderConfig:
    """One ``[[providers]]`` entry."""

    name: str = attrs.field(metadata=spec.string(check=_not_empty))
    kind: str = attrs.field(metadata=spec.string(choices=PROVIDER_KINDS))
    # Bedrock: the AWS region; Vertex: the Google Cloud location ("global" or a region).
    region: str = attrs.field(default="", metadata=spec.string(check=_region_name))
    # Vertex: the Google Cloud project id.
    project: str = attrs.field(default="", metadata=spec.string(check=_project_id))
    # Bedrock: a named profile of the shared AWS config, instead of the default chain.
    profile: str | None = attrs.field(default=None, metadata=spec.string(check=_not_empty))
    # Bedrock: the cross-region inference profile prefixed to model ids ("" for the base ids).
    inference_profile: str = attrs.field(default="global", metadata=spec.string(choices=INFERENCE_PROFILES))
    # Vertex: a service account's JSON key, instead of Application Default Credentials.
    service_account_file: str | None = attrs.field(default=None, metadata=spec.string(check=_not_empty))
    # Each kind's public endpoint when left out (tests and VPC endpoints set their own).
    base_url: str = attrs.field(
        default=attrs.Factory(_default_base_url, takes_self=True),
        metadata=spec.string(clean=_strip_slash, check=_http_url),
    )
    # None together with ``passthrough``: forward the client's credential; None for the kinds
    # that sign with cloud credentials (bedrock, vertex).
    api_key: str | None = attrs.field(
        default=None,
        metadata=spec.credential(
            env_key="api_key_env", passthrough_field="passthrough", not_taken=_signs_itself
        ),
    )
    auth: str = attrs.field(
        default=attrs.Factory(_auth_style_for, takes_self=True), metadata=spec.string(choices=AUTH_STYLES)
    )
    passthrough: bool = False  # set by ``api_key = "passthrough"``
    models: tuple[str, ...] = attrs.field(default=(), metadata=spec.strings())
    headers: Mapping[str, str] = attrs.field(factory=dict, metadata=spec.string_table(sent=True))
    timeouts: Timeouts = attrs.field(factory=Timeouts, metadata=spec.table(Timeouts))
    max_connections: int = attrs.field(default=200, metadata=spec.integer(lo=1))
    max_keepalive: int = attrs.field(default=50, metadata=spec.integer(lo=0))
    # How long an idle pooled connection to the provider is kept.
    keepalive_s: float = attrs.field(default=30.0, metadata=spec.number(lo=0))
    # Retries on this same provider, for connect errors only (nothing reached the provider,
    # so a retry cannot duplicate work). Other failures move on to the next provider.
    max_retries: int = attrs.field(default=0, metadata=spec.integer(lo=0, hi=10))
    # OpenAI-compatible providers only: map `thinking` to `reasoning_effort`, and the name of
    # the output limit field (`max_completion_tokens` for OpenAI's newest models).
    reasoning_effort: bool = attrs.field(default=False, metadata=spec.boolean())
    max_tokens_field: str = attrs.field(default="max_tokens", metadata=spec.string(choices=MAX_TOKENS_FIELDS))
    # What the provider accepts of a request: its kind's preset, then ``preset``, then the
    # ``[providers.capabilities]`` table (config/capabilities.py).
    preset: str | None = attrs.field(default=None, metadata=spec.string(choices=tuple(PRESETS)))
    capabilities: Capabilities = attrs.field(
        default=attrs.Factory(_default_capabilities, takes_self=True),
        metadata=spec.table(Capabilities, defaults=preset_for),
    )

    def __repr__(self) -> str:  # never print the key
        return f"ProviderConfig(name={self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"

    def problem(self) -> tuple[str, str] | None:
        """What a row of this kind lacks, said at load (the parser asks)."""
        if self.kind in ("bedrock", "vertex") and not self.region:
            where = (
                "an AWS region (us-east-1...)"
                if self.kind == "bedrock"
                else '"global" or a region (us-east5...)'
            )
            return "region", f"missing: kind {self.kind!r} needs {where}"
        if self.kind == "vertex" and not self.project:
            return "project", "missing: kind 'vertex' needs the Google Cloud project id"
        if not self.base_url:
            return "base_url", f"missing: kind {self.kind!r} has no default endpoint"
        if (needs := missing_extra(self.kind)) is not None:
            return "kind", needs
        return None


@attrs.frozen
class Target:
    provider: str = attrs.field(metadata=spec.provider_name())
    # None: send the client's model unchanged.
    model: str | None = attrs.field(default=None, metadata=spec.string())
    weight: float = attrs.field(default=1.0, metadata=spec.number(lo=0.0))
    # Tokens of input plus output this target's model holds; 0: the provider's
    # `capabilities.context_window`, else the known models' table (protocol/windows.py).
    context_window: int = attrs.field(default=0, metadata=spec.integer(lo=0))


def _route_name(value: str) -> str | None:
    # It is sent as the x-balancer-route header's value.
    if value and all(" " <= c <= "~" for c in value):
        return None
    return "must be printable ASCII, not empty (it is sent as the x-balancer-route header)"


@attrs.frozen
class When:
    """A route's ``when`` table: conditions on the request, every one given must hold.

    A condition left out is no condition; ``thinking = false`` (and the other booleans) asks
    for the request *not* to have it. ``policy/conditions.py`` says how each one is checked.
    """

    thinking: bool | None = attrs.field(default=None, metadata=spec.boolean())
    min_input_tokens: int | None = attrs.field(default=None, metadata=spec.integer(lo=0))
    max_input_tokens: int | None = attrs.field(default=None, metadata=spec.integer(lo=0))
    images: bool | None = attrs.field(default=None, metadata=spec.boolean())
    tools: tuple[str, ...] = attrs.field(default=(), metadata=spec.strings())  # all of them present
    server_tools: tuple[str, ...] = attrs.field(default=(), metadata=spec.strings())  # all present
    background: bool | None = attrs.field(default=None, metadata=spec.boolean())
    subagent: bool | None = attrs.field(default=None, metadata=spec.boolean())
    client: tuple[str, ...] = attrs.field(default=(), metadata=spec.strings())  # any of them
    header: Mapping[str, str] = attrs.field(factory=dict, metadata=spec.string_table())  # name: glob

    @property
    def empty(self) -> bool:
        return self == When()

    def problem(self) -> tuple[str, str] | None:
        """A ``when`` no request can satisfy is a mistake, said at load (the parser asks)."""
        low, high = self.min_input_tokens, self.max_input_tokens
        if low is not None and high is not None and low > high:
            return "min_input_tokens", f"{low} is above max_input_tokens {high}: no request can match"
        return None


@attrs.frozen
class Route:
    """One ``[[routes]]`` entry; a key it leaves out takes its value from ``[routing]``."""

    match: str = attrs.field(metadata=spec.string())
    targets: tuple[Target, ...] = attrs.field(metadata=spec.tables(Target, noun="target", at_least_one=True))
    strategy: str = attrs.field(default="priority", metadata=spec.string(choices=STRATEGIES))
    # Keep requests of one Claude Code session (its X-Claude-Code-Session-Id header, else
    # metadata.user_id) on one provider while it stays healthy: prompt caches live per provider.
    sticky: bool = attrs.field(default=False, metadata=spec.boolean())
    # What the x-balancer-route header and the ledger call it; None: its index in [[routes]].
    name: str | None = attrs.field(default=None, metadata=spec.string(check=_route_name))
    when: When = attrs.field(factory=When, metadata=spec.table(When))


@attrs.frozen
class RoutingConfig:
    """Defaults for routes that do not say, and for the implicit route when there are none.

    ``strategy`` and ``sticky`` are the defaults of the ``Route`` fields of the same name.
    """

    strategy: str = attrs.field(default="priority", metadata=spec.string(choices=STRATEGIES))
    sticky: bool = attrs.field(default=False, metadata=spec.boolean())
    # For every route: when a target renames the model, the client still sees the model it asked
    # for in the answer (``protocol/model_name.py``) unless this is true.
    show_upstream_model: bool = attrs.field(default=False, metadata=spec.boolean())


@attrs.frozen
class HealthPolicy:
    """How a provider's health (``policy/health.py``) answers failures; ``[health]`` sets the cooldowns."""

    base_cooldown_s: float = attrs.field(default=1.0, metadata=spec.number(lo=0.001))
    max_cooldown_s: float = attrs.field(default=300.0, metadata=spec.number(lo=0.001))
    auth_cooldown_s: float = attrs.field(default=600.0, metadata=spec.number(lo=0.001))
    # Not configurable. Cooldowns derived from backoff are multiplied by a factor in
    # [1 - jitter, 1 + jitter] so that instances and providers that failed together do not
    # all come back together.
    jitter: float = 0.2
    # Not configurable. A provider-requested wait (retry-after) longer than this is capped: we
    # would rather send one trial than park a provider for an hour on a misconfigured header.
    max_retry_after_s: float = 600.0


@attrs.frozen
class ServerConfig:
    host: str = attrs.field(default="127.0.0.1", metadata=spec.string())
    port: int = attrs.field(default=8787, metadata=spec.integer(lo=0, hi=65535))
    # How long running streams may go on after SIGINT/SIGTERM before they are cancelled.
    grace_period_s: float = attrs.field(default=30.0, metadata=spec.number(lo=0))
    # Claude Code sends whole conversations, images included; Anthropic's own limit is 32 MB.
    max_body_bytes: int = attrs.field(default=32 * 1024 * 1024, metadata=spec.integer(lo=1))
    # Claude Code's headers are about 2 KiB; 64 KiB leaves room for any real client.
    max_header_bytes: int = attrs.field(default=64 * 1024, metadata=spec.integer(lo=1024))
    # A client that takes longer than this to send its body is holding a handler hostage.
    body_timeout_s: float = attrs.field(default=60.0, metadata=spec.number(lo=0.001))
    client_keys: tuple[ClientKey, ...] = attrs.field(
        default=(), metadata=spec.tables(ClientKey, noun="client key", unique="name")
    )
    admin_key_sha256: str | None = attrs.field(
        default=None, metadata=spec.string(clean=str.lower, check=_sha256_digest)
    )
    # /metrics without the admin key (for a scraper on another host).
    public_metrics: bool = attrs.field(default=False, metadata=spec.boolean())
    # Serve clients beyond loopback without client keys.
    allow_open: bool = attrs.field(default=False, metadata=spec.boolean())
    # Requests in progress, all clients together; 0 in the file: no limit.
    max_concurrent: int | None = attrs.field(default=2000, metadata=spec.integer(lo=0, zero_is_none=True))
    # What one upstream may send: a response, and one SSE event. Past these it is cut off.
    max_upstream_response_bytes: int = attrs.field(default=256 * 1024 * 1024, metadata=spec.integer(lo=1024))
    max_upstream_event_bytes: int = attrs.field(
        default=DEFAULT_MAX_EVENT_BYTES, metadata=spec.integer(lo=1024)
    )
    # Without client keys, a request's Host must be a loopback name or address, or one of
    # these (a name of this machine that clients use), so DNS rebinding cannot reach us.
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), metadata=spec.strings(clean=str.lower))
    # Balancer processes on the port (serve --workers); 0: one per core.
    workers: int = attrs.field(default=1, metadata=spec.integer(lo=0, hi=256))
    # The calendar the client keys' budgets count days and months in.
    budget_timezone: str = attrs.field(default="UTC", metadata=spec.string(check=_timezone))
    # How often the spend of other instances (and of this one before a restart) is read back
    # from the ledger while any key has a budget.
    budget_sync_s: float = attrs.field(default=5.0, metadata=spec.number(lo=0.1))


@attrs.frozen
class DedupConfig:
    enabled: bool = attrs.field(default=True, metadata=spec.boolean())
    cache_ttl_s: float = attrs.field(default=60.0, metadata=spec.number(lo=0))
    cache_max_bytes: int = attrs.field(default=64 * 1024 * 1024, metadata=spec.integer(lo=0))
    include_max_tokens: bool = attrs.field(default=True, metadata=spec.boolean())
    finish_orphans: bool = attrs.field(default=False, metadata=spec.boolean())
    # A listener sharing a stream may fall this far behind (events and bytes buffered, and
    # seconds the others wait for it once past them) before it is cut off with an error.
    max_lag_events: int = attrs.field(default=1024, metadata=spec.integer(lo=1))
    max_lag_bytes: int = attrs.field(default=1024 * 1024, metadata=spec.integer(lo=1024))
    max_lag_s: float = attrs.field(default=10.0, metadata=spec.number(lo=0.001))
    # A response larger than this is neither shared with late joiners nor cached: a shared
    # flight holds at most this much for replay.
    max_shared_bytes: int = attrs.field(default=4 * 1024 * 1024, metadata=spec.integer(lo=0))


@attrs.frozen
class AlertsConfig:
    """``[alerts]``: a webhook told when a key's budget passes 80 % and 100 % of a period, and
    when a provider cools down or recovers (``app/alerts.py``)."""

    # None: no webhook. Slack's and others' URLs carry their secret: it is never logged.
    webhook_url: str | None = attrs.field(default=None, metadata=spec.string(check=_http_url))
    timeout_s: float = attrs.field(default=5.0, metadata=spec.number(lo=0.1))
    retries: int = attrs.field(default=3, metadata=spec.integer(lo=0, hi=10))

    def __repr__(self) -> str:
        return f"AlertsConfig(webhook_host={url_host(self.webhook_url)!r})"


@attrs.frozen
class ClusterConfig:
    # None: one instance, all state local.
    redis_url: str | None = attrs.field(default=None, metadata=spec.string(check=_redis_url))
    # Default: hostname-pid.
    instance_id: str | None = attrs.field(default=None, metadata=spec.string())
    # A crashed instance's concurrency slots free themselves after this.
    lease_ttl_s: float = attrs.field(default=30.0, metadata=spec.number(lo=1.0))

    def __repr__(self) -> str:
        return (
            f"ClusterConfig(redis_url={redact_url(self.redis_url or '')!r}, instance_id={self.instance_id!r})"
        )


@attrs.frozen
class LedgerConfig:
    enabled: bool = attrs.field(default=True, metadata=spec.boolean())
    url: str = attrs.field(
        default="sqlite:///~/.local/share/trio-balancer/ledger.sqlite3",
        metadata=spec.string(check=_ledger_url),
    )
    # With a database server as the ledger: where records wait while it is unreachable.
    spill_path: str = attrs.field(
        default="~/.local/share/trio-balancer/ledger-spill.sqlite3", metadata=spec.string()
    )

    def __repr__(self) -> str:  # the URL may carry a password
        return f"LedgerConfig(enabled={self.enabled}, url={redact_url(self.url)!r})"


def _five_minute_write(row: PriceRow) -> float:
    return row.input * 1.25


def _one_hour_write(row: PriceRow) -> float:
    return row.input * 2.0


def _cache_read(row: PriceRow) -> float:
    return row.input * 0.1


@attrs.frozen(kw_only=True)
class PriceRow:
    """One ``[[prices]]`` entry as written (flat); ``Config.prices`` holds it as a ``Price``.

    USD per million tokens. Cache rates left out follow Anthropic's usual shape.
    """

    model: str = attrs.field(metadata=spec.string())  # a glob over model ids
    provider: str | None = attrs.field(default=None, metadata=spec.provider_name())  # None: any
    input: float = attrs.field(metadata=spec.number(lo=0))
    output: float = attrs.field(metadata=spec.number(lo=0))
    cache_write_5m: float = attrs.field(
        default=attrs.Factory(_five_minute_write, takes_self=True), metadata=spec.number(lo=0)
    )
    cache_write_1h: float = attrs.field(
        default=attrs.Factory(_one_hour_write, takes_self=True), metadata=spec.number(lo=0)
    )
    cache_read: float = attrs.field(
        default=attrs.Factory(_cache_read, takes_self=True), metadata=spec.number(lo=0)
    )

    def price(self) -> Price:
        rates = Rates(
            input=self.input,
            output=self.output,
            cache_write_5m=self.cache_write_5m,
            cache_write_1h=self.cache_write_1h,
            cache_read=self.cache_read,
        )
        return Price(model=self.model, provider=self.provider, rates=rates)


@attrs.frozen
class Config:
    """The whole file. The TOML keys are in the order the unknown-key message lists them."""

    server: ServerConfig = attrs.field(metadata=spec.table(ServerConfig))
    providers: tuple[ProviderConfig, ...] = attrs.field(
        metadata=spec.tables(ProviderConfig, noun="provider", unique="name")
    )
    routes: tuple[Route, ...] = attrs.field(default=(), metadata=spec.tables(Route))
    routing: RoutingConfig = attrs.field(factory=RoutingConfig, metadata=spec.table(RoutingConfig))
    health: HealthPolicy = attrs.field(factory=HealthPolicy, metadata=spec.table(HealthPolicy))
    ledger: LedgerConfig = attrs.field(factory=LedgerConfig, metadata=spec.table(LedgerConfig))
    prices: tuple[Price, ...] = attrs.field(
        default=(), metadata=spec.tables(PriceRow, convert=PriceRow.price)
    )
    dedup: DedupConfig = attrs.field(factory=DedupConfig, metadata=spec.table(DedupConfig))
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig, metadata=spec.table(ClusterConfig))
    alerts: AlertsConfig = attrs.field(factory=AlertsConfig, metadata=spec.table(AlertsConfig))
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
