"""How a config field is read from TOML: its kind of value and its limits, as field metadata.

The schema (``config/schema.py``) writes each key once, as an attrs field whose metadata holds
one of the specs below; the parser (``config/parse.py``) derives from them the keys a table
allows and how each value is checked. A field without a spec is not a TOML key (it is derived,
like ``ProviderConfig.passthrough``, or fixed, like ``HealthPolicy.jitter``).

Every check here returns what is wrong in words that finish "``<key path>: ...``", or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = [
    "SPEC",
    "Boolean",
    "Credential",
    "Integer",
    "Number",
    "ProviderName",
    "Spec",
    "String",
    "StringTable",
    "Strings",
    "Table",
    "Tables",
    "boolean",
    "credential",
    "integer",
    "number",
    "provider_name",
    "spec_of",
    "string",
    "string_table",
    "strings",
    "table",
    "tables",
]

SPEC = "trio_balancer.config.spec"  # the metadata key


@attrs.frozen
class Spec:
    """What every kind of value has in common: the TOML keys it is read from."""

    def keys(self, field_name: str) -> tuple[str, ...]:
        return (field_name,)


@attrs.frozen
class String(Spec):
    choices: tuple[str, ...] = ()  # empty: any string
    clean: Callable[[str], str] | None = None  # applied before ``check`` (case, trailing slash)
    check: Callable[[str], str | None] | None = None


@attrs.frozen
class ProviderName(Spec):
    """A string that must name one of the configured ``[[providers]]``."""


@attrs.frozen
class Boolean(Spec):
    pass


@attrs.frozen
class Integer(Spec):
    lo: int | None = None
    hi: int | None = None
    zero_is_none: bool = False  # ``0`` turns the limit off


@attrs.frozen
class Number(Spec):
    """An integer or a float, read as a float."""

    lo: float | None = None  # kept as written: the message prints it (``0`` vs ``0.0``)
    false_is_none: bool = False  # ``false`` turns the deadline off


@attrs.frozen
class Strings(Spec):
    """A list of strings, read as a tuple."""

    clean: Callable[[str], str] | None = None


@attrs.frozen
class StringTable(Spec):
    """A table whose keys are free (HTTP header names) and whose values are strings.

    ``sent``: the headers are sent as they are (a provider's): no connection or framing header,
    no value HTTP would refuse, no name twice in another case.
    """

    sent: bool = False


@attrs.frozen
class Table(Spec):
    """A table read into another schema class; a missing table is an empty one.

    ``defaults``, given the values of the enclosing table read so far, says what the keys this
    table leaves out are (a provider's capabilities start from its kind's preset).
    """

    cls: type[Any]
    defaults: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None


@attrs.frozen
class Tables(Spec):
    """An array of tables, each read into ``cls``; read as a tuple of them, or of ``convert(row)``."""

    cls: type[Any]
    noun: str = ""  # what one row is, for messages: "duplicate provider name 'a'"
    unique: str | None = None  # a field no two rows may share
    at_least_one: bool = False
    convert: Callable[[Any], Any] | None = None


@attrs.frozen
class Credential(Spec):
    """A secret given inline, through an environment variable (``env_key``), or as "passthrough".

    The field gets the secret (``None`` for passthrough); ``passthrough_field`` gets whether the
    client's own credential is forwarded instead.
    """

    env_key: str
    passthrough_field: str
    # Given the row's values read so far: why this row takes no such secret (a kind that signs
    # with its own cloud credentials), or None when it needs one.
    not_taken: Callable[[Mapping[str, Any]], str | None] | None = None

    def keys(self, field_name: str) -> tuple[str, ...]:
        return (field_name, self.env_key)


def spec_of(field: attrs.Attribute[Any]) -> Spec | None:
    found = field.metadata.get(SPEC)
    return found if isinstance(found, Spec) else None


def _meta(spec: Spec) -> Mapping[str, Spec]:
    return {SPEC: spec}


# The helpers below are what the schema writes: ``attrs.field(default=..., metadata=integer(lo=1))``.


def string(
    *,
    choices: tuple[str, ...] = (),
    clean: Callable[[str], str] | None = None,
    check: Callable[[str], str | None] | None = None,
) -> Mapping[str, Spec]:
    return _meta(String(choices=choices, clean=clean, check=check))


def provider_name() -> Mapping[str, Spec]:
    return _meta(ProviderName())


def boolean() -> Mapping[str, Spec]:
    return _meta(Boolean())


def integer(
    *, lo: int | None = None, hi: int | None = None, zero_is_none: bool = False
) -> Mapping[str, Spec]:
    return _meta(Integer(lo=lo, hi=hi, zero_is_none=zero_is_none))


def number(*, lo: float | None = None, false_is_none: bool = False) -> Mapping[str, Spec]:
    return _meta(Number(lo=lo, false_is_none=false_is_none))


def strings(*, clean: Callable[[str], str] | None = None) -> Mapping[str, Spec]:
    return _meta(Strings(clean=clean))


def string_table(*, sent: bool = False) -> Mapping[str, Spec]:
    return _meta(StringTable(sent=sent))


def table(
    cls: type[Any], *, defaults: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
) -> Mapping[str, Spec]:
    return _meta(Table(cls, defaults=defaults))


def tables(
    cls: type[Any],
    *,
    noun: str = "",
    unique: str | None = None,
    at_least_one: bool = False,
    convert: Callable[[Any], Any] | None = None,
) -> Mapping[str, Spec]:
    return _meta(Tables(cls, noun=noun, unique=unique, at_least_one=at_least_one, convert=convert))


def credential(
    *,
    env_key: str,
    passthrough_field: str,
    not_taken: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> Mapping[str, Spec]:
    return _meta(Credential(env_key=env_key, passthrough_field=passthrough_field, not_taken=not_taken))
