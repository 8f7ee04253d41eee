"""Tool schemas rewritten into the JSON-Schema dialect a provider accepts, keeping their meaning. Pure.

Claude Code's tools carry full JSON Schema 2020-12 (``$schema``, ``propertyNames``,
``exclusiveMinimum``, ``const``, ``format: uri``...). Gemini, also behind its OpenAI-compatible
endpoint, parses function parameters into its ``Schema`` proto, a subset of OpenAPI 3.0, and
answers 400 ``Invalid JSON payload received. Unknown name "propertyNames"`` to any other key,
for the whole request (the most-reported Claude-Code-on-Gemini failure across gateways).

Deleting the keys (what most gateways do) makes the request pass but tells the model less.
Here a keyword Gemini lacks is rewritten into one it has where one means the same
(``const`` -> a one-value ``enum``, ``$ref`` -> the schema it names, ``type: [T, "null"]`` and
``anyOf`` with ``null`` -> ``nullable``, an exclusive integer bound -> the next integer), and
otherwise dropped with its constraint written into the ``description`` the model reads.

Dialects: ``json-schema`` (left as it is) and ``gemini``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

__all__ = ["DIALECTS", "GEMINI_KEYS", "MAX_NODES", "clean_schema", "clean_tools"]

DIALECTS = ("json-schema", "gemini")

# The fields of Gemini's Schema object (generativelanguage v1beta ``Schema``; Vertex's ``Schema``
# is the same set plus a few it alone parses): every other key is a 400.
GEMINI_KEYS = frozenset(
    {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
     "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
     "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
)  # fmt: skip
# ``format`` values Gemini's Developer API takes per type; any other fails the request.
_FORMATS: Mapping[str, frozenset[str]] = {
    "string": frozenset({"enum", "date-time"}),
    "number": frozenset({"float", "double"}),
    "integer": frozenset({"int32", "int64"}),
}
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
_NUMBER_KEYS = ("minimum", "maximum")
_COUNT_KEYS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
# Keys whose loss changes nothing a model could act on: said nowhere.
_SILENT = frozenset(
    {"$schema", "$id", "$anchor", "$dynamicAnchor", "$vocabulary", "$comment", "readOnly", "writeOnly"}
)
# Keys that leave a schema matching any value.
_UNCONSTRAINING = frozenset({"description", "title", "default", "example"})
# Below this, a schema is cut (the request validator already refuses JSON nested past 128).
MAX_DEPTH = 64
# A ``$ref`` is expanded at most this many times along one path: recursive schemas are cut.
MAX_REF_DEPTH = 8
# Past this many nodes produced for one schema, a ``$ref`` is no longer expanded but cut with its
# name said. MAX_REF_DEPTH bounds a path, not the tree: a 1.6 KB chain of $defs whose k properties
# each name the next expands k**depth times (k=8, 8 levels: 232 MB and 21 s of CPU on the event
# loop). Claude Code's largest tool has a dozen nodes; 1,000 are ~100 KB for Gemini to read.
MAX_NODES = 1000  # beyond the input's own
# What a schema that admits no value (``false``, an ``allOf`` whose parts disagree) says instead:
# Gemini has no such schema, and leaving it out would mean "any value".
_NEVER = "no value is allowed here"
# allOf parts' keys where the stricter value of two holds (the larger minimum, the smaller maximum).
_LOWER = frozenset({"minimum", "exclusiveMinimum", "minItems", "minLength", "minProperties"})
_UPPER = frozenset({"maximum", "exclusiveMaximum", "maxItems", "maxLength", "maxProperties"})
# allOf parts' keys where a second, different value says nothing a model acts on: the first is kept.
_MERGED_QUIETLY = _SILENT | {"title", "default", "example", "examples", "$defs", "definitions"}


def clean_schema(schema: Any, dialect: str) -> tuple[Any, tuple[str, ...]]:
    """``schema`` in ``dialect``, and what was changed (one short note per rewrite kind).

    An already-clean schema comes back as the same object with no notes; the input is never
    mutated.
    """
    if dialect == "json-schema" or not isinstance(schema, dict):
        return schema, ()
    if dialect != "gemini":
        raise ValueError(f"unknown schema dialect {dialect!r}")
    cleaner = _Gemini(schema)
    cleaned = cleaner.node(schema, 0, ("#",))  # the root is being expanded: "#" recurses
    if _same(cleaned, schema):
        return schema, ()
    return cleaned, tuple(sorted(cleaner.notes)) or ("rewritten",)


def clean_tools(payload: Mapping[str, Any], dialect: str) -> tuple[Mapping[str, Any], str | None]:
    """An Anthropic Messages payload whose ``tools[].input_schema`` are in ``dialect``.

    Server tools (no ``input_schema``) are left as they are. Untouched: the same payload, None.
    """
    tools = payload.get("tools")
    if dialect == "json-schema" or not isinstance(tools, list):
        return payload, None
    out: list[Any] = []
    changed: list[str] = []
    notes: set[str] = set()
    for tool in tools:
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        cleaned, why = clean_schema(schema, dialect)
        if cleaned is schema:
            out.append(tool)
            continue
        out.append({**tool, "input_schema": cleaned})
        changed.append(str(tool.get("name", "?")))
        notes.update(why)
    if not changed:
        return payload, None
    which = ", ".join(changed) if len(changed) <= 5 else f"{len(changed)} tools"
    note = f"tool schemas in the {dialect} dialect ({', '.join(sorted(notes))}) for {which}"
    return {**payload, "tools": out}, note


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (``True`` and ``1`` differ, unlike ``==``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _joined_text(first: Any, second: str) -> str:
    """Two descriptions as one, the second left out if the first already says it."""
    if not isinstance(first, str) or not first:
        return second
    return first if second in first else f"{first} {second}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _said(description: Any, *facts: str) -> str:
    """``description`` with ``facts`` appended, each once."""
    text = description if isinstance(description, str) else ""
    for fact in facts:
        if fact and fact not in text:
            text = f"{text} ({fact})" if text else f"({fact})"
    return text


class _Gemini:
    """One schema's rewrite: its root (for local ``$ref``s) and the notes gathered."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.notes: set[str] = set()
        self.produced = 0  # nodes made and $refs expanded so far, against the budget
        self.budget = MAX_NODES + _size(root)  # a big schema without $refs is never cut
        self._anchors: dict[str, dict[str, Any]] | None = None

    # -- one node ----------------------------------------------------------------------------

    def node(self, schema: Any, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        """One schema node in Gemini's dialect (anything not a schema becomes the empty schema)."""
        self.produced += 1
        if not isinstance(schema, dict):
            if schema is not True:  # ``true`` is JSON Schema's "anything"; ``false`` has no equal
                self.notes.add("non-object schema")
            return {} if schema is not False else {"description": f"({_NEVER})"}
        if depth >= MAX_DEPTH:
            self.notes.add("cut at depth")
            return {"description": "(nested too deep to describe)"}
        schema, facts, refs = self._inline(schema, refs)
        schema = self._merge_all_of(schema, depth, refs, facts)
        out: dict[str, Any] = {}
        self._types(schema, out, facts)
        for key, value in schema.items():
            if key in ("type", "$ref", "$defs", "definitions", "allOf", "nullable"):
                continue
            self._key(key, value, schema, out, facts, depth, refs)
        _finish(out, facts, self.notes)
        return out

    def _inline(
        self, schema: dict[str, Any], refs: tuple[str, ...]
    ) -> tuple[dict[str, Any], list[str], tuple[str, ...]]:
        """``schema`` with its ``$ref`` replaced by what it names (its siblings kept over it).

        Also the refs expanded on the way here, so a recursive schema is cut where it recurs; a
        ``$ref`` that recurs, nests too deep or comes past MAX_NODES is cut to its target's type
        and description, its name said.
        """
        if "$ref" not in schema:
            return schema, [], refs
        ref = schema["$ref"]
        self.notes.add("$ref inlined")
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        target = self._target(ref) if isinstance(ref, str) else None
        if target is None:
            return rest, [f"schema: {_compact(ref)}"], refs
        why = (
            "recursive" if ref in refs
            else "nested too deep to inline" if len(refs) >= MAX_REF_DEPTH
            else "too large to inline" if self.produced >= self.budget
            else None
        )  # fmt: skip
        if why is not None:
            self.notes.add("recursion cut" if ref in refs else "$ref cut")
            base: dict[str, Any] = {
                k: target[k] for k in ("type", "description") if isinstance(target.get(k), str)
            }
            kept = {k: v for k, v in rest.items() if k in ("description", "title")}
            return {**base, **kept}, [f"{why}: the same schema as {ref}"], refs
        self.produced += 1  # an allOf merges what it expands without making nodes: count it here
        inner, facts, inner_refs = self._inline(target, (*refs, ref))
        return {**inner, **rest}, facts, inner_refs

    def _target(self, ref: str) -> dict[str, Any] | None:
        """The schema a local ``$ref`` names: a JSON pointer (``#``, ``#/$defs/X``) or an anchor
        (``#name``: the schema whose ``$anchor``, or draft 7 ``$id``, is ``name``), else None."""
        if ref == "#" or ref.startswith("#/"):
            return _resolve(self.root, unquote(ref))
        if not ref.startswith("#") or len(ref) == 1:
            return None
        if self._anchors is None:
            self._anchors = _anchors(self.root)
        return self._anchors.get(unquote(ref[1:]))

    def _merge_all_of(
        self, schema: dict[str, Any], depth: int, refs: tuple[str, ...], facts: list[str]
    ) -> dict[str, Any]:
        """``allOf`` folded into one schema that says what every part says.

        Properties and ``required`` are joined, types and enums intersected, bounds the stricter
        kept. Where no value can satisfy every part (a ``false`` part, types or enums with nothing
        in common) that is said ("no value is allowed here"), never left as "any value" or as the
        first part's claim; any other key two parts set differently keeps the first, the second said.
        """
        parts = schema.get("allOf")
        if "allOf" not in schema:
            return schema
        self.notes.add("allOf merged")
        merged: dict[str, Any] = {}
        dead: set[str] = set()  # keys whose parts disagree: said once, then left out
        _merge_part({k: v for k, v in schema.items() if k != "allOf"}, merged, facts, dead, self.notes)
        unique = {_compact(p): p for p in parts}.values() if isinstance(parts, list) else ()  # A and A: A
        for part in unique:
            if part is False:
                self.notes.add("allOf false described")
                facts.append(_NEVER)
                continue
            if not isinstance(part, dict) or depth >= MAX_DEPTH:
                continue
            part, more, part_refs = self._inline(part, refs)
            facts.extend(more)
            part = self._merge_all_of(part, depth + 1, part_refs, facts)
            _merge_part(part, merged, facts, dead, self.notes)
        return merged

    # -- types ---------------------------------------------------------------------------------

    def _types(self, schema: Mapping[str, Any], out: dict[str, Any], facts: list[str]) -> None:
        """``type`` as one name; ``null`` among them as ``nullable``; several as an ``anyOf``."""
        kind = schema.get("type")
        names = kind if isinstance(kind, list) else [kind] if kind is not None else []
        if schema.get("nullable") is True or "null" in names:
            out["nullable"] = True
            if "null" in names:
                self.notes.add("null type as nullable")
        kept = [n for n in names if isinstance(n, str) and n in _TYPES]
        kept = list(dict.fromkeys(kept))
        if len(kept) < len([n for n in names if n != "null"]):
            self.notes.add("unknown type dropped")
            facts.append(f"type: {_compact(kind)}")
        if len(kept) == 1:
            out["type"] = kept[0]
            if isinstance(kind, list):
                self.notes.add("type list")
        elif len(kept) > 1 and ("anyOf" in schema or "oneOf" in schema):
            self.notes.add("type list described")
            facts.append(f"type: one of {', '.join(kept)}")
        elif len(kept) > 1:
            self.notes.add("type list as anyOf")
            null = {"nullable": True} if out.get("nullable") else {}
            out["anyOf"] = [{"type": n, **null} for n in kept]
        elif "nullable" in schema and schema.get("nullable") is not True and not names:
            self.notes.add("nullable false dropped")

    # -- every other key -----------------------------------------------------------------------

    def _key(
        self,
        key: str,
        value: Any,
        schema: Mapping[str, Any],
        out: dict[str, Any],
        facts: list[str],
        depth: int,
        refs: tuple[str, ...],
    ) -> None:
        if key == "properties":
            if isinstance(value, dict):
                out["properties"] = {n: self.node(s, depth + 1, refs) for n, s in value.items()}
            else:
                self.notes.add("bad properties dropped")
        elif key == "items":
            if isinstance(value, (dict, bool)):
                out["items"] = self.node(value, depth + 1, refs)
            elif isinstance(value, list):
                self.notes.add("tuple items")
                facts.append(f"items in order: {_compact(value)}")
        elif key in ("anyOf", "oneOf"):
            self._any_of(key, value, out, facts, depth, refs)
        elif key == "const":
            self.notes.add("const as enum")
            self._enum([value], out, facts)
        elif key == "enum":
            if isinstance(value, list):
                self._enum(value, out, facts)
            else:
                self.notes.add("bad enum dropped")
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            _exclusive(key, value, schema, out, facts, self.notes)
        elif key in _NUMBER_KEYS:
            if _number(value):
                _bound(key, value, out)
            else:
                self.notes.add(f"bad {key} dropped")
        else:
            self._plain(key, value, schema, out, facts, depth, refs)

    def _plain(
        self,
        key: str,
        value: Any,
        schema: Mapping[str, Any],
        out: dict[str, Any],
        facts: list[str],
        depth: int,
        refs: tuple[str, ...],
    ) -> None:
        """A key kept as it is when Gemini has it with this value's type, else said or dropped."""
        if key in _COUNT_KEYS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = value
        elif key in ("title", "description", "pattern") and isinstance(value, str):
            out[key] = _joined_text(out.get(key), value) if key == "description" else value
        elif key in ("default", "example"):
            out[key] = value
        elif key in ("required", "propertyOrdering") and isinstance(value, list):
            names = [n for n in value if isinstance(n, str)]
            out[key] = list(dict.fromkeys(names))
            if len(out[key]) != len(value):
                self.notes.add(f"bad {key} entries dropped")
        elif key == "format" and isinstance(value, str):
            out["format"] = value  # checked against the type in _finish
        elif key == "additionalProperties":
            self.notes.add("additionalProperties dropped")
            inner = self.node(value, depth + 1, refs) if isinstance(value, dict) and value else {}
            if inner:
                facts.append(f"values of other keys: {_compact(inner)}")
            elif value is not False and not schema.get("properties"):
                facts.append("an object with any keys")
        elif key == "propertyNames":
            self.notes.add("propertyNames dropped")
            if isinstance(value, dict) and value and value != {"type": "string"}:
                facts.append(f"property names: {_compact(value)}")
        elif key in _SILENT:
            self.notes.add(f"{key} dropped")
        else:
            self.notes.add(f"{key} described" if key not in GEMINI_KEYS else f"bad {key} dropped")
            facts.append(_fact(key, value))

    def _any_of(
        self,
        key: str,
        value: Any,
        out: dict[str, Any],
        facts: list[str],
        depth: int,
        refs: tuple[str, ...],
    ) -> None:
        """``anyOf``/``oneOf``: ``null`` branches as ``nullable``; same-type enums joined; one branch inlined."""
        if key == "oneOf":
            self.notes.add("oneOf as anyOf")
        if not isinstance(value, list):
            self.notes.add(f"bad {key} dropped")
            return
        cleaned = (self.node(b, depth + 1, refs) for b in value if b is not False)
        branches = list({_compact(b): b for b in cleaned}.values())
        possible = [b for b in branches if _NEVER not in b.get("description", "")]
        if len(possible) < len(value):  # ``false`` (or what admits nothing) adds no value: dropped
            self.notes.add("no-value branch dropped")
            branches = possible
            if not branches:
                facts.append(_NEVER)
                return
        if any(not set(b) - _UNCONSTRAINING for b in branches):
            self.notes.add("anyOf with an any-value branch dropped")  # X or anything: anything
            return
        if any(b == {"nullable": True} for b in branches):
            self.notes.add("null branch as nullable")
            out["nullable"] = True
        branches = [b for b in branches if b != {"nullable": True}]
        if not branches:
            return
        joined = _joined_enums(branches)
        if joined is not None:
            self.notes.add("enum branches joined")
            branches = [joined]
        if len(branches) == 1:
            if len(value) > 1:
                self.notes.add("single branch inlined")
            for k, v in branches[0].items():
                if k == "description":
                    out["description"] = _joined_text(out.get("description"), v)
                else:
                    out.setdefault(k, v)
            return
        if out.get("nullable"):
            branches = [{**b, "nullable": True} for b in branches]
        out["anyOf"] = branches

    def _enum(self, values: Sequence[Any], out: dict[str, Any], facts: list[str]) -> None:
        """Gemini's ``enum`` holds strings: others are said in the description; ``null`` is ``nullable``."""
        if None in values:
            out["nullable"] = True
            self.notes.add("null enum value as nullable")
        values = [v for v in values if v is not None]
        if values and all(isinstance(v, str) for v in values):
            both = [v for v in out.get("enum", values) if v in values]  # const and enum: both hold
            out["enum"] = list(dict.fromkeys(both or values))
            if "type" not in out:
                out["type"] = "string"
                self.notes.add("enum typed string")
        elif values:
            self.notes.add("non-string enum described")
            if len(values) == 1:
                facts.append(f"must be {_compact(values[0])}")
            else:
                facts.append(f"one of: {', '.join(_compact(v) for v in values)}")


# -- allOf parts and bounds ---------------------------------------------------------------


def _merge_part(
    part: Mapping[str, Any], merged: dict[str, Any], facts: list[str], dead: set[str], notes: set[str]
) -> None:
    """One ``allOf`` part into ``merged``: its ``null`` type folded into ``type``, ``const`` as ``enum``."""
    part = _null_in_type(part)
    for key, value in part.items():
        if key == "const":
            key, value = "enum", [value]
        if key in dead:
            continue
        if key not in merged:
            merged[key] = value
        elif not _same(merged[key], value):
            _merge_key(key, merged[key], value, merged, facts, dead, notes)


def _merge_key(
    key: str,
    have: Any,
    value: Any,
    merged: dict[str, Any],
    facts: list[str],
    dead: set[str],
    notes: set[str],
) -> None:
    """Two parts' different values for ``key``: both must hold."""
    both_dicts = isinstance(have, dict) and isinstance(value, dict)
    if key == "properties" and both_dicts:
        props = dict(have)
        for name, sub in value.items():
            props[name] = (
                {"allOf": [props[name], sub]} if name in props and not _same(props[name], sub) else sub
            )
        merged[key] = props
    elif key == "items" and (isinstance(have, (dict, bool)) and isinstance(value, (dict, bool))):
        merged[key] = {"allOf": [have, value]}
    elif key == "required" and isinstance(have, list) and isinstance(value, list):
        seen = {_compact(r) for r in have}
        merged[key] = have + [r for r in value if _compact(r) not in seen]
    elif key == "description" and isinstance(have, str) and isinstance(value, str):
        merged[key] = _joined_text(have, value)
    elif key == "nullable":
        merged[key] = have is True and value is True
    elif key in _LOWER | _UPPER and _number(have) and _number(value):
        merged[key] = max(have, value) if key in _LOWER else min(have, value)
    elif key in ("type", "enum") and (met := _meet(key, have, value)) is not None:
        if met:
            merged[key] = met
            return
        notes.add("allOf conflict described")
        facts.append(f"{_NEVER}: allOf parts disagree on {key}: {_disagreement(key, have, value)}")
        del merged[key]
        dead.add(key)
    elif key not in _MERGED_QUIETLY:
        notes.add("allOf conflict described")
        facts.append(f"also, from allOf: {_fact(key, value)}")


def _exclusive(
    key: str, value: Any, schema: Mapping[str, Any], out: dict[str, Any], facts: list[str], notes: set[str]
) -> None:
    """An exclusive bound as an inclusive one: the next integer for integers, else said as text."""
    low = key == "exclusiveMinimum"
    plain = "minimum" if low else "maximum"
    bound: Any = value
    if isinstance(value, bool):  # draft 4: a flag on ``minimum``/``maximum``
        bound = schema.get(plain)
        if not value or not _number(bound):
            notes.add(f"{key} dropped")
            return
    elif not _number(value):
        notes.add(f"bad {key} dropped")
        return
    notes.add(f"{key} as {plain}")
    if schema.get("type") == "integer":
        step = math.floor(bound) + 1 if low else math.ceil(bound) - 1
        _bound(plain, step, out)
        return
    _bound(plain, bound, out)
    if out.get(plain) == bound:
        facts.append(f"{'greater' if low else 'less'} than {_compact(bound)}, not equal")


def _number(value: Any) -> bool:
    """A usable bound: any int (a 400-digit one too: ``math.isfinite`` of it raises
    OverflowError), a finite float; not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _anchors(root: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ``$anchor`` (and draft 7 plain-name ``$id: "#name"``) in the document: the first wins.

    Walked without recursion (the document is already bounded by the request's size).
    """
    found: dict[str, dict[str, Any]] = {}
    stack: list[Any] = [root]
    while stack:
        here = stack.pop()
        if isinstance(here, list):
            stack.extend(reversed(here))
            continue
        if not isinstance(here, dict):
            continue
        names = [here.get("$anchor")]
        if isinstance(here.get("$id"), str) and here["$id"].startswith("#"):
            names.append(here["$id"][1:])
        for name in names:
            if isinstance(name, str) and name:
                found.setdefault(name, here)
        stack.extend(reversed(list(here.values())))
    return found


def _size(root: Mapping[str, Any]) -> int:
    """How many objects the document holds (its schema nodes, roughly), walked without recursion."""
    count = 0
    stack: list[Any] = [root]
    while stack:
        here = stack.pop()
        if isinstance(here, dict):
            count += 1
            stack.extend(here.values())
        elif isinstance(here, list):
            stack.extend(here)
    return count


def _null_in_type(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """An OpenAPI ``nullable: true`` beside a ``type`` as ``"null"`` in it, so types intersect."""
    kind = schema.get("type")
    if schema.get("nullable") is not True or not isinstance(kind, (str, list)):
        return schema
    names = [kind] if isinstance(kind, str) else kind
    rest = {k: v for k, v in schema.items() if k != "nullable"}
    return {**rest, "type": names if "null" in names else [*names, "null"]}


def _meet(key: str, have: Any, value: Any) -> list[Any] | str | None:
    """What two ``type``s (``integer`` within ``number``) or two ``enum``s both allow, [] if
    nothing, None if either is not a well-formed one."""
    if key == "enum":
        if not isinstance(have, list) or not isinstance(value, list):
            return None
        allowed = {_compact(w) for w in value}
        return [v for v in have if _compact(v) in allowed]
    a, b = _type_names(have), _type_names(value)
    if a is None or b is None:
        return None
    both: list[str] = []
    for n in a:
        if n in b or (n == "integer" and "number" in b):
            both.append(n)
        elif n == "number" and "integer" in b:
            both.append("integer")
    both = list(dict.fromkeys(both))
    return both[0] if len(both) == 1 else both


def _type_names(kind: Any) -> list[str] | None:
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list) and all(isinstance(n, str) for n in kind):
        return kind
    return None


def _disagreement(key: str, have: Any, value: Any) -> str:
    if key == "type":
        return ", ".join(dict.fromkeys([*(_type_names(have) or []), *(_type_names(value) or [])]))
    return f"{_compact(have)}, {_compact(value)}"


def _resolve(root: Mapping[str, Any], ref: str) -> dict[str, Any] | None:
    """The schema a local JSON pointer (``#``, ``#/$defs/X``, ...) names, or None."""
    if not ref.startswith("#"):
        return None
    here: Any = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(here, dict) and part in here:
            here = here[part]
        elif isinstance(here, list) and part.isdigit() and int(part) < len(here):
            here = here[int(part)]
        else:
            return None
    return here if isinstance(here, dict) else None


def _bound(key: str, value: float, out: dict[str, Any]) -> None:
    """Keep the stricter of two bounds on the same side."""
    have = out.get(key)
    if have is None:
        out[key] = value
    else:
        out[key] = max(have, value) if key == "minimum" else min(have, value)


# -- the node as a whole -------------------------------------------------------------------


def _finish(out: dict[str, Any], facts: list[str], notes: set[str]) -> None:
    """What needs the whole node: its type inferred, ``format`` and object keys checked."""
    if "type" not in out and "properties" in out:
        out["type"] = "object"
        notes.add("object typed")
    if out.get("type") == "object" and "properties" not in out:
        out["properties"] = {}  # Gemini rejects an object without a properties map (any keys: said)
        notes.add("object given properties")
    kind = out.get("type")
    fmt = out.get("format")
    takes = _FORMATS.get(kind if isinstance(kind, str) else "", frozenset())
    if fmt is not None and fmt not in takes and not (fmt == "enum" and "enum" in out):
        del out["format"]
        notes.add("format described")
        facts.append(f"format: {fmt}")
    if kind is not None and kind != "object":
        for key in ("properties", "required", "minProperties", "maxProperties", "propertyOrdering"):
            if key in out:
                del out[key]
                notes.add(f"{key} off an object dropped")
    required = out.get("required")
    if required is not None:
        props = out.get("properties") or {}
        missing = [r for r in required if r not in props]
        if missing:
            notes.add("required without property")
            facts.append(f"also requires the keys: {', '.join(missing)}")
            out["required"] = [r for r in required if r in props]
        if not out["required"]:
            del out["required"]
    if out.get("nullable") is not True:
        out.pop("nullable", None)
    text = [f for f in facts if f]
    if text:
        out["description"] = _said(out.get("description"), *text)


def _fact(key: str, value: Any) -> str:
    """What a dropped keyword said, in words the model reads in the description."""
    match key, value:
        case "uniqueItems", True:
            return "items must be unique"
        case "uniqueItems", _:
            return ""
        case "multipleOf", _:
            return f"a multiple of {_compact(value)}"
        case "deprecated", True:
            return "deprecated"
        case "examples", list():
            return f"examples: {', '.join(_compact(v) for v in value)}"
        case "not", _:
            return f"must not match: {_compact(value)}"
        case (("contentEncoding" | "contentMediaType"), str()):
            return f"{key}: {value}"
        case _:
            return f"{key}: {_compact(value)}"


def _joined_enums(branches: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Branches that are all ``{type: T, enum: [...]}`` of one type, as one such schema, else None."""
    kinds = {b.get("type") for b in branches}
    if (
        len(branches) < 2
        or len(kinds) != 1
        or any(set(b) - {"type", "enum", "description"} for b in branches)
    ):
        return None
    if not all("enum" in b for b in branches):
        return None
    values = list(dict.fromkeys(v for b in branches for v in b["enum"]))  # cleaned: strings
    joined: dict[str, Any] = {"type": kinds.pop(), "enum": values}
    texts = [b["description"] for b in branches if "description" in b]
    if texts:
        joined["description"] = " ".join(dict.fromkeys(texts))
    return joined
