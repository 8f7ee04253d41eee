"""TOML into a ``Config``, strictly, with the keys and checks derived from the schema.

Validation is strict and happens once, at start: an unknown key is a typo until proven
otherwise, and every message names the offending key by its path (``providers[1].kind``)
so the operator can fix it without reading our source. Within a table, the unknown-key
check comes first and the values are then read in the schema's field order.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from trio_balancer.config.schema import (
    PASSTHROUGH,
    Config,
    HealthPolicy,
    LedgerConfig,
    ProviderConfig,
    Route,
    RoutingConfig,
    ServerConfig,
    default_config,
)
from trio_balancer.config.spec import (
    Boolean,
    Credential,
    Integer,
    Number,
    ProviderName,
    Spec,
    String,
    Strings,
    StringTable,
    Table,
    Tables,
    spec_of,
)

__all__ = ["ConfigError", "load_config", "parse_config"]

_T = TypeVar("_T")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a header's name
# Headers a provider's ``headers`` may not set: they describe one hop's connection or the
# body's framing, or they are how the balancer keeps bodies byte-exact (identity encoding).
_UNSENDABLE = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade", "host", "content-length", "expect", "accept-encoding"})  # fmt: skip
_MISSING: Any = object()


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


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
    """Read the top-level tables in the order their checks depend on each other.

    Routes take their defaults from ``[routing]`` and name providers; prices name providers;
    a passthrough provider is refused once ``[server]`` has client keys.
    """
    top = _Table(data, "", source)
    top.reject_unknown(Config)
    ctx = _Context(env=os.environ if environ is None else environ)
    f = attrs.fields(Config)
    server: ServerConfig = _read_field(top, f.server, ctx)
    routing: RoutingConfig = _read_field(top, f.routing, ctx)
    health: HealthPolicy = _read_field(top, f.health, ctx)
    providers: tuple[ProviderConfig, ...] = _read_field(top, f.providers, ctx)
    if server.client_keys:
        for i, provider in enumerate(providers):
            if provider.passthrough:
                raise top.error(
                    f"providers[{i}].api_key",
                    f'"{PASSTHROUGH}" forwards the client\'s key, but with [[server.client_keys]] the'
                    " client's key is the balancer's: give this provider its own key",
                )
    route_fields = attrs.fields_dict(Route)  # [routing] may also hold keys no route has
    route_defaults = {k: v for k, v in attrs.asdict(routing).items() if k in route_fields}
    ctx = attrs.evolve(
        ctx, provider_names=frozenset(p.name for p in providers), defaults={Route: route_defaults}
    )
    ledger: LedgerConfig = _read_field(top, f.ledger, ctx)
    if not ledger.enabled:
        for i, key in enumerate(server.client_keys):
            if key.has_budget:
                raise top.error(
                    f"server.client_keys[{i}]",
                    "has a budget, and budgets are kept in the usage ledger (they survive restarts"
                    " through it): enable [ledger]",
                )
    return Config(
        server=server, providers=providers, routes=_read_field(top, f.routes, ctx), routing=routing,
        health=health, ledger=ledger, prices=_read_field(top, f.prices, ctx),
        dedup=_read_field(top, f.dedup, ctx), cluster=_read_field(top, f.cluster, ctx),
        alerts=_read_field(top, f.alerts, ctx), source=source,
    )  # fmt: skip


@attrs.frozen
class _Context:
    """What reading one table needs to know from the rest of the file."""

    env: Mapping[str, str]
    provider_names: frozenset[str] = frozenset()
    # Per schema class: values for the fields a table leaves out, instead of the class defaults.
    defaults: Mapping[type[Any], Mapping[str, Any]] = attrs.field(factory=dict)


def _specs(cls: type[Any]) -> tuple[tuple[attrs.Attribute[Any], Spec], ...]:
    """The fields of ``cls`` that are TOML keys, in order."""
    return tuple((f, s) for f in attrs.fields(cls) if (s := spec_of(f)) is not None)


def _read_object(t: _Table, cls: type[_T], ctx: _Context) -> _T:
    """One table into one schema class; a key left out takes ``ctx.defaults``' value, else the field's."""
    t.reject_unknown(cls)
    values: dict[str, Any] = dict(ctx.defaults.get(cls, {}))
    for field, spec in _specs(cls):
        if isinstance(spec, Credential):
            values.update(_read_credential(t, field.name, spec, ctx, values))
        elif isinstance(spec, Table) and spec.defaults is not None:
            inner = attrs.evolve(ctx, defaults={**ctx.defaults, spec.cls: spec.defaults(values)})
            values[field.name] = _read_field(t, field, inner)
        elif field.name in t.data or isinstance(spec, Table):
            values[field.name] = _read_field(t, field, ctx)
        elif field.default is attrs.NOTHING:
            raise t.error(field.name, "missing")
    made = cls(**values)
    problem = getattr(made, "problem", None)
    if callable(problem) and (found := problem()) is not None:
        key, message = found
        raise t.error(key, message)
    return made


def _read_field(t: _Table, field: attrs.Attribute[Any], ctx: _Context) -> Any:
    """One value of ``t`` as its spec says; present, unless it is a table or an array of tables."""
    spec, key = spec_of(field), field.name
    if isinstance(spec, String):
        return _read_string(t, key, spec)
    if isinstance(spec, ProviderName):
        name = t.get(key, (str,), "a string")
        if name not in ctx.provider_names:
            raise t.error(key, f"no provider named {name!r}")
        return name
    if isinstance(spec, Boolean):
        return t.get(key, (bool,), "true or false")
    if isinstance(spec, Integer):
        return _read_integer(t, key, spec)
    if isinstance(spec, Number):
        return _read_number(t, key, spec)
    if isinstance(spec, Strings):
        return tuple(map(spec.clean, t.strings(key)) if spec.clean else t.strings(key))
    if isinstance(spec, StringTable):
        headers = t.table(key)
        out: dict[str, str] = {}
        for name in headers.data:
            value = headers.get(name, (str,), "a string")
            if not _TOKEN.fullmatch(name):
                raise headers.error(name, "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
            if not all(" " <= c <= "~" or c == "\t" for c in value):
                raise headers.error(
                    name, "must be printable ASCII (it is compared with, or sent as, a header's bytes)"
                )
            if spec.sent:
                _check_sent_header(headers, name, value, out)
            out[name] = value
        return out
    if isinstance(spec, Table):
        return _read_object(t.table(key), spec.cls, ctx)
    if isinstance(spec, Tables):
        return _read_tables(t, key, spec, ctx, required=field.default is attrs.NOTHING)
    raise TypeError(f"{field.name}: no reader for {spec!r}")  # pragma: no cover - a schema bug


def _check_sent_header(headers: _Table, name: str, value: str, earlier: Mapping[str, str]) -> None:
    if value != value.strip(" \t"):
        raise headers.error(name, "must not begin or end with spaces (HTTP refuses such a value)")
    if name.lower() in _UNSENDABLE:
        raise headers.error(name, "is the balancer's to set (it describes the connection or the body)")
    if any(other.lower() == name.lower() for other in earlier):
        raise headers.error(name, "is given twice (header names are case-insensitive)")


def _read_string(t: _Table, key: str, spec: String) -> str:
    value: str = t.get(key, (str,), "a string")
    if spec.clean is not None:
        value = spec.clean(value)
    if spec.choices and value not in spec.choices:
        raise t.error(key, f"must be one of {', '.join(map(repr, spec.choices))}, not {value!r}")
    if spec.check is not None and (problem := spec.check(value)) is not None:
        raise t.error(key, problem)
    return value


def _read_integer(t: _Table, key: str, spec: Integer) -> int | None:
    value: int = t.get(key, (int,), "an integer")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise t.error(key, f"must be between {spec.lo} and {spec.hi}, not {value}")
    return None if spec.zero_is_none and value == 0 else value


def _read_number(t: _Table, key: str, spec: Number) -> float | None:
    if spec.false_is_none and t.data[key] is False:
        return None
    value: float = t.get(key, (int, float), "a number")
    if not math.isfinite(value):  # TOML has nan and inf: a price or budget of either means nothing
        raise t.error(key, f"must be a finite number, not {value}")
    if spec.lo is not None and value < spec.lo:
        raise t.error(key, f"must be at least {spec.lo}, not {value}")
    return float(value)


def _read_tables(t: _Table, key: str, spec: Tables, ctx: _Context, *, required: bool) -> tuple[Any, ...]:
    rows = [_read_object(row, spec.cls, ctx) for row in t.tables(key, required=required)]
    if spec.unique is not None:
        seen = [getattr(row, spec.unique) for row in rows]
        for i, value in enumerate(seen):
            if value in seen[:i]:
                raise t.error(f"{key}[{i}].{spec.unique}", f"duplicate {spec.noun} {spec.unique} {value!r}")
    if spec.at_least_one and not rows:
        raise t.error(key, f"must name at least one {spec.noun}")
    return tuple(map(spec.convert, rows) if spec.convert else rows)


def _read_credential(
    t: _Table, key: str, spec: Credential, ctx: _Context, values: Mapping[str, Any]
) -> dict[str, Any]:
    """The secret inline, from the environment, or ``"passthrough"``: exactly one of them;
    none at all for a row that signs with credentials of its own (``spec.not_taken``)."""
    env_key = spec.env_key
    secret: str | None = t.get(key, (str,), "a string", None)
    variable: str | None = t.get(env_key, (str,), "a string", None)
    why_not = spec.not_taken(values) if spec.not_taken is not None else None
    if why_not is not None:
        if secret is not None or variable is not None:
            raise t.error(key if secret is not None else env_key, why_not)
        return {key: None, spec.passthrough_field: False}
    if secret is not None and variable is not None:
        raise t.error(env_key, f"give either {key} or {env_key}, not both")
    passthrough = secret == PASSTHROUGH
    if variable is not None:
        secret = ctx.env.get(variable)
        if not secret:
            raise t.error(env_key, f"environment variable {variable!r} is not set")
    elif secret is None:
        raise t.error(key, f'missing: set {key}, {env_key}, or {key} = "{PASSTHROUGH}"')
    return {key: None if passthrough else secret, spec.passthrough_field: passthrough}


class _Table:
    """Typed access to one TOML table that knows its own path for error messages."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        self.data = data
        self._path = path
        self._source = source

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self._source}: {self._where(key)}: {message}")

    def reject_unknown(self, cls: type[Any]) -> None:
        allowed = [key for field, spec in _specs(cls) for key in spec.keys(field.name)]
        for key in self.data:
            if key not in allowed:
                raise self.error(key, f"unknown key (expected one of: {', '.join(allowed)})")

    def get(self, key: str, types: tuple[type, ...], what: str, default: Any = _MISSING) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise self.error(key, "missing")
            return default
        # bool is an int in Python; a port of `true` is a typo, not 1.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.error(key, f"must be {what}, not {type(value).__name__}")
        return value

    def strings(self, key: str) -> Sequence[str]:
        value = self.get(key, (list,), "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"must be a string, not {type(item).__name__}")
        return value  # type: ignore[no-any-return]

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, (dict,), "a table", {}), self._where(key), self._source)

    def tables(self, key: str, *, required: bool) -> list[_Table]:
        value = self.get(key, (list,), "an array of tables", _MISSING if required else [])
        base = self._where(key)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(f"{self._source}: {base}[{i}]: must be a table")
            out.append(_Table(item, f"{base}[{i}]", self._source))
        return out
