"""Tool schemas in a provider's JSON-Schema dialect: Gemini's strict subset, meaning kept.

Each rewrite rule of ``protocol/schema_dialect.py`` is pinned on a small schema; a hypothesis
property checks that any JSON-Schema-ish input comes out with only keys Gemini takes, and
stays put when cleaned again; then the real Claude Code tool lists (the captured fixtures in
``tests/data/claude_code``) are cleaned and sent through the balancer to a fake Gemini that
answers 400 to what the real one rejects.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.protocol.convert import to_openai
from trio_balancer.protocol.schema_dialect import GEMINI_KEYS, MAX_NODES, clean_schema, clean_tools
from trio_balancer.upstream.fit import fit_request

from .fakes import (
    GEMINI_SCHEMA_KEYS,
    SSE_HEADERS,
    FakeUpstream,
    Received,
    Reply,
    _schema_rejection,
    anthropic_text_events,
    error_reply,
    openai_rejection,
    openai_text_stream,
)
from .helpers import NO_DEDUP, PROVIDER_KEY, BalancerFactory, fit_provider, fit_request_of

# Every tool list Claude Code sent in the captured fixtures (tests/data/claude_code/README.md):
# several per version (the main loop's, subagents'); 2.1.197's main one is the reference.
FIXTURES = Path(__file__).parent / "data" / "claude_code"
TOOL_LISTS: dict[str, list[dict[str, Any]]] = {
    p.relative_to(FIXTURES).as_posix(): json.loads(p.read_text())
    for p in sorted(FIXTURES.glob("*/shared/tools-*.json"))
}
TOOLS = TOOL_LISTS["2.1.197/shared/tools-50550b9bbe.json"]


def gemini(schema: dict[str, Any]) -> dict[str, Any]:
    cleaned, notes = clean_schema(schema, "gemini")
    assert notes, "a rewrite must say what it changed"
    assert _schema_rejection(cleaned, "t") is None
    return cleaned  # type: ignore[no-any-return]


def prop(schema: dict[str, Any]) -> dict[str, Any]:
    """The one property ``x`` of an object schema, cleaned."""
    out = gemini({"type": "object", "properties": {"x": schema}})
    return out["properties"]["x"]  # type: ignore[no-any-return]


class TestRules:
    def test_json_schema_dialect_leaves_everything(self) -> None:
        schema = {"$schema": "x", "type": "object", "propertyNames": {"pattern": "a"}}
        assert clean_schema(schema, "json-schema") == (schema, ())

    def test_unknown_dialect_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="unknown schema dialect"):
            clean_schema({"type": "object"}, "yaml")

    def test_clean_schema_is_returned_as_is(self) -> None:
        schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 2, "pattern": "^a"}},
                  "required": ["a"]}  # fmt: skip
        assert clean_schema(schema, "gemini") == (schema, ())
        assert clean_schema(schema, "gemini")[0] is schema

    def test_dollar_schema_and_ids_dropped_silently(self) -> None:
        out = gemini({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "$comment": "c",
                      "type": "object", "properties": {}})  # fmt: skip
        assert out == {"type": "object", "properties": {}}

    def test_local_refs_are_inlined(self) -> None:
        out = gemini({
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/point", "description": "where"},
                           "q": {"$ref": "#/definitions/n"}},
            "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "definitions": {"n": {"type": "integer"}},
        })  # fmt: skip
        assert out["properties"]["p"] == {"type": "object", "description": "where",
                                          "properties": {"x": {"type": "number"}}, "required": ["x"]}  # fmt: skip
        assert out["properties"]["q"] == {"type": "integer"}
        assert "$defs" not in out and "definitions" not in out

    def test_recursive_ref_is_cut_with_its_shape_said(self) -> None:
        out = gemini({"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
                      "type": "object", "properties": {"root": {"$ref": "#/$defs/node"}}})  # fmt: skip
        kids = out["properties"]["root"]["properties"]["kids"]["items"]
        assert (
            kids["type"] == "object" and "recursive: the same schema as #/$defs/node" in kids["description"]
        )

    def test_root_recursion_is_cut(self) -> None:
        out = gemini({"type": "object", "properties": {"next": {"$ref": "#"}, "v": {"type": "string"}}})
        assert out["properties"]["next"]["type"] == "object"
        assert "recursive" in out["properties"]["next"]["description"]

    def test_unresolvable_ref_is_said(self) -> None:
        assert prop({"$ref": "https://example.com/s.json"}) == {
            "description": '(schema: "https://example.com/s.json")'
        }

    def test_const_becomes_a_single_enum(self) -> None:
        assert prop({"type": "string", "const": "deleted"}) == {"type": "string", "enum": ["deleted"]}
        assert prop({"const": "x"}) == {"type": "string", "enum": ["x"]}

    def test_non_string_enum_is_said_in_the_description(self) -> None:
        assert prop({"type": "integer", "enum": [1, 2, 3]}) == {
            "type": "integer",
            "description": "(one of: 1, 2, 3)",
        }
        assert prop({"type": "boolean", "const": True, "description": "Must confirm"}) == {
            "type": "boolean", "description": "Must confirm (must be true)"}  # fmt: skip

    def test_null_in_enum_is_nullable(self) -> None:
        assert prop({"enum": ["a", None]}) == {"type": "string", "enum": ["a"], "nullable": True}

    def test_exclusive_integer_bounds_become_the_next_integer(self) -> None:
        assert prop({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}) == {
            "type": "integer", "minimum": 1, "maximum": 9}  # fmt: skip

    def test_exclusive_number_bound_is_kept_and_said(self) -> None:
        out = prop({"type": "number", "exclusiveMinimum": 0.5, "description": "Ratio"})
        assert out == {"type": "number", "minimum": 0.5, "description": "Ratio (greater than 0.5, not equal)"}

    def test_draft4_exclusive_flag(self) -> None:
        assert prop({"type": "integer", "minimum": 3, "exclusiveMinimum": True}) == {
            "type": "integer",
            "minimum": 4,
        }
        assert prop({"type": "integer", "maximum": 3, "exclusiveMaximum": False}) == {
            "type": "integer",
            "maximum": 3,
        }

    def test_stricter_bound_wins(self) -> None:
        assert prop({"type": "integer", "minimum": 5, "exclusiveMinimum": 0})["minimum"] == 5

    def test_type_list_with_null_is_nullable(self) -> None:
        assert prop({"type": ["string", "null"], "minLength": 1}) == {
            "type": "string",
            "nullable": True,
            "minLength": 1,
        }

    def test_type_list_of_several_becomes_any_of(self) -> None:
        assert prop({"type": ["string", "integer"]}) == {"anyOf": [{"type": "string"}, {"type": "integer"}]}

    def test_any_of_with_null_is_nullable(self) -> None:
        assert prop({"anyOf": [{"type": "string"}, {"type": "null"}], "description": "d"}) == {
            "type": "string", "nullable": True, "description": "d"}  # fmt: skip
        out = prop({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]})
        assert out == {
            "nullable": True,
            "anyOf": [{"type": "string", "nullable": True}, {"type": "integer", "nullable": True}],
        }

    def test_any_of_with_an_any_value_branch_is_any_value(self) -> None:
        assert prop({"type": "string", "anyOf": [{"minLength": 3}, {"description": "anything"}]}) == {
            "type": "string"
        }

    def test_object_without_properties_gets_an_empty_map(self) -> None:
        """Gemini answers 400 "should be non-empty for OBJECT type" to an object with no map."""
        assert prop({"type": "object"}) == {"type": "object", "properties": {}}

    def test_one_of_becomes_any_of_and_all_of_is_merged(self) -> None:
        assert prop({"oneOf": [{"type": "string"}, {"type": "integer"}]}) == {
            "anyOf": [{"type": "string"}, {"type": "integer"}]
        }
        out = prop({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                              {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]})  # fmt: skip
        assert out == {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        }

    def test_string_enum_branches_are_joined(self) -> None:
        """Claude Code's TaskUpdate.status: an enum or a const, one enum for Gemini."""
        out = prop({"description": "New status", "anyOf": [{"type": "string", "enum": ["pending", "done"]},
                                                           {"type": "string", "const": "deleted"}]})  # fmt: skip
        assert out == {"description": "New status", "type": "string", "enum": ["pending", "done", "deleted"]}

    def test_unsupported_string_format_is_said(self) -> None:
        assert prop({"type": "string", "format": "uri", "description": "The URL"}) == {
            "type": "string", "description": "The URL (format: uri)"}  # fmt: skip
        for kept in ({"type": "string", "format": "date-time"}, {"type": "integer", "format": "int64"}):
            assert clean_schema(kept, "gemini") == (kept, ())

    def test_property_names_and_additional_properties(self) -> None:
        """Claude Code's free-form metadata maps: nothing the model needs is lost."""
        assert prop({"type": "object", "propertyNames": {"type": "string"}, "additionalProperties": {},
                     "description": "Arbitrary metadata"}) == {
            "type": "object", "properties": {}, "description": "Arbitrary metadata (an object with any keys)"}  # fmt: skip
        out = prop(
            {
                "type": "object",
                "propertyNames": {"pattern": "^[a-z]+$"},
                "additionalProperties": {"type": "integer"},
            }
        )
        assert out == {"type": "object", "properties": {},
                       "description": '(property names: {"pattern":"^[a-z]+$"}) (values of other keys: {"type":"integer"})'}  # fmt: skip
        assert gemini({"type": "object", "properties": {}, "additionalProperties": False}) == {
            "type": "object",
            "properties": {},
        }

    def test_other_constraints_are_said(self) -> None:
        out = prop(
            {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "contains": {"const": "a"}}
        )
        assert out["description"] == '(items must be unique) (contains: {"const":"a"})'
        assert prop({"type": "number", "multipleOf": 5}) == {
            "type": "number",
            "description": "(a multiple of 5)",
        }
        assert prop({"type": "string", "examples": ["a", "b"]}) == {
            "type": "string",
            "description": '(examples: "a", "b")',
        }

    def test_required_without_a_property_is_removed_and_said(self) -> None:
        out = gemini({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]})
        assert out["required"] == ["a"] and "(also requires the keys: b)" in out["description"]

    def test_properties_off_an_object_are_dropped_and_objects_typed(self) -> None:
        assert prop({"type": "string", "properties": {"a": {}}}) == {"type": "string"}
        assert prop({"properties": {"a": {"type": "string"}}}) == {
            "type": "object",
            "properties": {"a": {"type": "string"}},
        }

    def test_input_is_never_mutated(self) -> None:
        schema = {"type": "object", "$defs": {"d": {"type": "string", "format": "uri"}},
                  "properties": {"a": {"$ref": "#/$defs/d"}, "b": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}  # fmt: skip
        before = copy.deepcopy(schema)
        gemini(schema)
        assert schema == before

    def test_depth_is_bounded(self) -> None:
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(400):
            schema = {"type": "array", "items": schema}
        out = gemini(schema)
        assert "too deep" in json.dumps(out)


def nodes_of(schema: Any) -> int:
    """How many schema nodes a cleaned schema holds (its size, counted without a clock)."""
    if not isinstance(schema, dict):
        return 0
    subs = [*(schema.get("properties") or {}).values(), *(schema.get("anyOf") or [])]
    if isinstance(schema.get("items"), dict):
        subs.append(schema["items"])
    return 1 + sum(nodes_of(s) for s in subs)


def chained_defs(k: int, n: int) -> dict[str, Any]:
    """``n`` definitions, each an object of ``k`` properties that all name the next: k**n leaves."""
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(k)}}
        for i in range(n)
    }
    defs[f"d{n}"] = {"type": "string"}
    return {"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/d0"}}}


class TestAttacks:
    """Regressions from an attack on the cleaner: each once crashed, blew up, or changed a meaning."""

    @pytest.mark.parametrize("key", ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"])
    def test_a_huge_integer_bound_does_not_crash_the_cleaner(self, key: str) -> None:
        """json.loads reads a 400-digit literal as an int: math.isfinite() raised OverflowError (a 500)."""
        huge = 10**400
        digits = "1" + "0" * 400
        schema = json.loads(
            f'{{"type": "object", "properties": {{"x": {{"type": "integer", "{key}": {digits}}}}}}}'
        )
        cleaned, _ = clean_schema(schema, "gemini")
        assert _schema_rejection(cleaned, "t") is None
        out = cleaned["properties"]["x"]
        assert out["type"] == "integer"
        plain = key.replace("exclusiveM", "m")
        assert out[plain] == {"minimum": huge, "maximum": huge, "exclusiveMinimum": huge + 1,
                              "exclusiveMaximum": huge - 1}[key]  # fmt: skip

    def test_a_huge_number_bound_is_kept(self) -> None:
        assert prop({"type": "number", "exclusiveMaximum": 10**400})["maximum"] == 10**400

    @pytest.mark.parametrize("bound", [float("inf"), float("nan")])
    def test_a_draft4_flag_on_a_non_finite_bound_is_dropped(self, bound: float) -> None:
        """``Infinity`` and ``NaN`` parse in Python's json: math.floor() of them raised."""
        out = prop({"type": "integer", "minimum": bound, "exclusiveMinimum": True})
        assert out == {"type": "integer"}

    def test_ref_expansion_is_bounded_in_size(self) -> None:
        """A 2 KB schema of chained $defs must not blow up into megabytes (and seconds of CPU,
        synchronously, on the event loop: 8 properties x 8 levels was 230 MB and 20 s)."""
        schema = chained_defs(5, 8)
        size_in = len(json.dumps(schema))
        out = gemini(schema)
        size_out = len(json.dumps(out))
        assert size_out <= 100 * size_in, f"{size_in} bytes in, {size_out} bytes out"
        assert "too large to inline: the same schema as #/$defs/d" in json.dumps(out)

    @pytest.mark.parametrize("k", [2, 8, 20])
    def test_ref_expansion_produces_a_bounded_number_of_nodes(self, k: int) -> None:
        """The work is bounded with the output: nodes counted, whatever the fan-out."""
        out = gemini(chained_defs(k, 8))
        assert nodes_of(out) <= MAX_NODES + 16 * (k + 2)  # the input's own nodes and the cut ones
        again = clean_schema(out, "gemini")
        assert again == (out, ())

    def test_allof_ref_expansion_is_bounded_too(self) -> None:
        """allOf parts are merged before any node is made: their expansions count on the budget."""
        defs: dict[str, Any] = {
            f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}", "title": f"t{j}"} for j in range(6)]}
            for i in range(6)
        }
        defs["d6"] = {"type": "string"}
        out = gemini({"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/d0"}}})[
            "properties"
        ]["x"]
        assert "too large to inline: the same schema as #/$defs/d" in out["description"]

    def test_a_big_schema_without_refs_is_not_cut(self) -> None:
        many = {
            f"p{i}": {"type": "object", "properties": {"q": {"$ref": "#/$defs/s"}}} for i in range(MAX_NODES)
        }
        out = gemini({"type": "object", "$defs": {"s": {"type": "string"}}, "properties": many})
        assert "too large" not in json.dumps(out) and out["properties"][f"p{MAX_NODES - 1}"]["properties"][
            "q"
        ] == {"type": "string"}

    def test_a_small_tree_of_refs_is_still_inlined_whole(self) -> None:
        out = gemini(chained_defs(2, 6))
        assert "too large" not in json.dumps(out) and nodes_of(out) == 2 + sum(2**i for i in range(1, 7))

    def test_anyof_with_a_false_branch_keeps_the_other_branch(self) -> None:
        """``false`` matches nothing: anyOf [false, string] means string, not "anything"."""
        assert prop({"anyOf": [False, {"type": "string"}]}) == {"type": "string"}
        assert prop({"oneOf": [{"type": "integer"}, False, {"type": "string"}]}) == {
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        }
        assert prop({"anyOf": [True, {"type": "string"}]}) == {}

    def test_anyof_of_only_false_branches_matches_no_value(self) -> None:
        assert prop({"anyOf": [False, {"allOf": [False]}]}) == {"description": "(no value is allowed here)"}

    def test_allof_false_is_not_turned_into_anything(self) -> None:
        assert prop({"allOf": [False]}) == {"description": "(no value is allowed here)"}
        assert prop({"allOf": [{"type": "string"}, False]}) == {
            "type": "string",
            "description": "(no value is allowed here)",
        }
        assert prop({"allOf": [True, {"type": "string"}]}) == {"type": "string"}

    def test_allof_with_conflicting_types_is_not_silently_the_first(self) -> None:
        out = prop({"allOf": [{"type": "string"}, {"type": "integer"}]})
        assert out == {
            "description": "(no value is allowed here: allOf parts disagree on type: string, integer)"
        }
        assert prop(
            {"anyOf": [{"allOf": [{"type": "string"}, {"type": "integer"}]}, {"type": "boolean"}]}
        ) == {"type": "boolean"}

    def test_allof_types_are_intersected(self) -> None:
        assert prop({"allOf": [{"type": "number"}, {"type": "integer"}]}) == {"type": "integer"}
        assert prop({"allOf": [{"type": ["string", "null"]}, {"type": ["integer", "string"]}]}) == {
            "type": "string"
        }
        assert prop({"allOf": [{"type": ["string", "null"]}, {"type": "string", "nullable": True}]}) == {
            "type": "string",
            "nullable": True,
        }

    def test_allof_bounds_keep_the_stricter(self) -> None:
        out = prop({"allOf": [{"type": "string", "minLength": 2, "maxLength": 9},
                              {"minLength": 4, "maxLength": 20}]})  # fmt: skip
        assert out == {"type": "string", "minLength": 4, "maxLength": 9}
        assert (
            prop({"allOf": [{"type": "integer", "minimum": 1}, {"minimum": 10**400}]})["minimum"] == 10**400
        )

    def test_allof_enums_are_intersected_and_consts_compared(self) -> None:
        assert prop({"allOf": [{"enum": ["a", "b", "c"]}, {"enum": ["c", "b", "d"]}]}) == {
            "type": "string",
            "enum": ["b", "c"],
        }
        assert prop({"allOf": [{"const": "a"}, {"const": "b"}]}) == {
            "description": '(no value is allowed here: allOf parts disagree on enum: ["a"], ["b"])'
        }
        assert prop({"allOf": [{"enum": ["a"]}, {"enum": ["b"]}]})["description"].startswith(
            "(no value is allowed here"
        )

    def test_allof_giving_one_property_two_schemas_says_the_conflict(self) -> None:
        out = prop(
            {"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"a": {"type": "integer"}}}]}
        )
        assert out["properties"]["a"] == {
            "description": "(no value is allowed here: allOf parts disagree on type: string, integer)"
        }
        same = prop(
            {"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"a": {"type": "string"}}}]}
        )
        assert same == {"type": "object", "properties": {"a": {"type": "string"}}}

    def test_allof_other_conflicting_constraints_are_said(self) -> None:
        out = prop({"allOf": [{"type": "string", "pattern": "^a"}, {"pattern": "b$"}]})
        assert out == {"type": "string", "pattern": "^a", "description": '(also, from allOf: pattern: "b$")'}

    def test_anchor_ref_resolves_to_its_anchor_not_the_root(self) -> None:
        schema = {
            "type": "object",
            "$defs": {"s": {"$anchor": "name", "type": "string", "minLength": 1}},
            "properties": {"x": {"$ref": "#name"}},
        }
        assert gemini(schema)["properties"]["x"] == {"type": "string", "minLength": 1}

    def test_draft7_plain_name_id_is_an_anchor_too(self) -> None:
        schema = {"type": "object", "definitions": {"s": {"$id": "#n", "type": "integer"}},
                  "properties": {"x": {"$ref": "#n"}}}  # fmt: skip
        assert gemini(schema)["properties"]["x"] == {"type": "integer"}

    def test_unknown_anchor_is_cut_with_a_note_never_the_root(self) -> None:
        out = prop({"$ref": "#nowhere"})
        assert out == {"description": '(schema: "#nowhere")'}

    def test_percent_encoded_pointer_resolves(self) -> None:
        schema = {
            "type": "object",
            "$defs": {"a b": {"type": "boolean"}},
            "properties": {"x": {"$ref": "#/$defs/a%20b"}},
        }
        assert gemini(schema)["properties"]["x"] == {"type": "boolean"}

    def test_boolean_schemas_as_properties(self) -> None:
        """``true`` is any value; ``false`` is no value (the key must be absent), said in words."""
        out = gemini({"type": "object", "properties": {"any": True, "none": False}})
        assert out["properties"] == {"any": {}, "none": {"description": "(no value is allowed here)"}}
        assert prop({"type": "array", "items": False}) == {
            "type": "array",
            "items": {"description": "(no value is allowed here)"},
        }

    def test_tuple_items_are_said_in_order(self) -> None:
        out = prop({"type": "array", "items": [{"type": "string"}, {"type": "integer"}]})
        assert out == {
            "type": "array",
            "description": '(items in order: [{"type":"string"},{"type":"integer"}])',
        }


def json_schemas() -> st.SearchStrategy[Any]:
    """Schema-shaped JSON: known keywords with plausible (and implausible) values, nested."""
    keys = st.sampled_from(sorted(GEMINI_SCHEMA_KEYS | {
        "$schema", "$id", "$ref", "$defs", "const", "exclusiveMinimum", "exclusiveMaximum", "propertyNames",
        "additionalProperties", "patternProperties", "oneOf", "allOf", "not", "if", "then", "uniqueItems",
        "multipleOf", "examples", "contains", "prefixItems", "dependentRequired", "x-vendor", "nullable",
        "$anchor"}))  # fmt: skip
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-5, 5), st.floats(-3, 3, allow_nan=False), st.text(max_size=4),
        st.sampled_from(["string", "integer", "number", "object", "array", "null", "boolean", "uri", "date-time",
                         "#", "#/$defs/a", "#/properties/a", "a", "#a"]),
    )  # fmt: skip

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(inner, max_size=3),
            st.lists(st.sampled_from(["string", "null", "integer", "a", "b"]), max_size=3),
            st.dictionaries(keys, inner, max_size=5),
            st.dictionaries(st.sampled_from(["a", "b", "$ref", "type"]), inner, max_size=3),
        )

    return st.dictionaries(keys, st.recursive(scalars, extend, max_leaves=25), max_size=6)


@settings(max_examples=400, deadline=None)
@given(json_schemas())
def test_any_schema_comes_out_in_gemini_keys_and_cleaning_again_changes_nothing(
    schema: dict[str, Any],
) -> None:
    before = copy.deepcopy(schema)
    cleaned, notes = clean_schema(schema, "gemini")
    assert schema == before
    assert _schema_rejection(cleaned, "t") is None
    again, more = clean_schema(cleaned, "gemini")
    assert again is cleaned and more == ()
    if not notes:
        assert cleaned is schema


def test_the_module_and_the_fake_agree_on_gemini_keys() -> None:
    assert GEMINI_KEYS == GEMINI_SCHEMA_KEYS


class TestClaudeCodeTools:
    def test_the_fixture_is_a_real_capture(self) -> None:
        assert len(TOOLS) >= 15 and {"Bash", "Read", "Edit", "Write"} <= {t["name"] for t in TOOLS}
        assert {v.split("/")[0] for v in TOOL_LISTS} >= {"2.0.77", "2.1.197", "2.1.332"}

    @pytest.mark.parametrize("name", sorted(TOOL_LISTS))
    def test_every_captured_tool_list_is_cleaned_with_its_names_kept(self, name: str) -> None:
        tools = [t for t in TOOL_LISTS[name] if "input_schema" in t]
        cleaned, _ = clean_tools({"tools": tools}, "gemini")
        for old, new in zip(tools, cleaned["tools"], strict=True):
            assert _schema_rejection(new["input_schema"], new["name"]) is None
            assert names_of(new["input_schema"]) == names_of(old["input_schema"])
            assert enums_of(new["input_schema"]) >= enums_of(old["input_schema"])

    def test_gemini_rejects_the_tools_as_sent(self) -> None:
        rejected = [t["name"] for t in TOOLS if _schema_rejection(t["input_schema"], "t")]
        assert len(rejected) == len(TOOLS)  # every one carries $schema

    def test_cleaned_tools_pass_and_keep_every_name_requirement_and_enum(self) -> None:
        payload = {"tools": TOOLS}
        before = copy.deepcopy(payload)
        cleaned, note = clean_tools(payload, "gemini")
        assert payload == before and note is not None and "exclusiveMinimum as minimum" in note
        for old, new in zip(TOOLS, cleaned["tools"], strict=True):
            assert {k: v for k, v in new.items() if k != "input_schema"} == {
                k: v for k, v in old.items() if k != "input_schema"
            }
            assert _schema_rejection(new["input_schema"], new["name"]) is None
            assert names_of(new["input_schema"]) == names_of(old["input_schema"])
            assert enums_of(new["input_schema"]) >= enums_of(old["input_schema"])
        assert clean_tools(cleaned, "gemini") == (cleaned, None)

    def test_read_limit_keeps_its_bound(self) -> None:
        read = next(t for t in clean_tools({"tools": TOOLS}, "gemini")[0]["tools"] if t["name"] == "Read")
        assert read["input_schema"]["properties"]["limit"]["minimum"] == 1

    def test_server_tools_are_left_alone(self) -> None:
        web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
        out, note = clean_tools({"tools": [web, TOOLS[0]]}, "gemini")
        assert out["tools"][0] is web and note is not None
        assert clean_tools({"tools": [web]}, "gemini") == ({"tools": [web]}, None)


def names_of(schema: Any, where: str = "") -> set[str]:
    """Every property name and ``required`` entry, by path."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for name, sub in (schema.get("properties") or {}).items():
            found.add(f"{where}.{name}")
            found |= names_of(sub, f"{where}.{name}")
        found |= {f"{where}!{r}" for r in schema.get("required") or []}
        if isinstance(schema.get("items"), dict):
            found |= names_of(schema["items"], f"{where}[]")
    return found


def enums_of(schema: Any) -> set[str]:
    """Every enum (and const) value anywhere in a schema."""
    if isinstance(schema, list):
        return set().union(*(enums_of(s) for s in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = {json.dumps(v) for v in schema.get("enum") or []}
    if "const" in schema:
        found.add(json.dumps(schema["const"]))
    return found.union(*(enums_of(v) for k, v in schema.items() if k not in ("enum", "const", "default")))


# -- in fit_request and through the balancer -----------------------------------------------------


def claude_code_turn() -> dict[str, Any]:
    return {"model": "claude-opus-4-6", "max_tokens": 1024, "stream": True, "tools": TOOLS,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


class TestFit:
    def test_default_anthropic_provider_gets_the_bytes_as_sent(self) -> None:
        request = fit_request_of(claude_code_turn())
        fitted = fit_request(fit_provider(), request, "claude-opus-4-6")
        assert fitted.body == request.body and fitted.changes == ()

    def test_anthropic_provider_with_the_gemini_dialect_gets_clean_input_schemas(self) -> None:
        p = fit_provider(capabilities={"schema_dialect": "gemini"})
        fitted = fit_request(p, fit_request_of(claude_code_turn()), "claude-opus-4-6")
        sent = json.loads(fitted.body)
        assert [t["name"] for t in sent["tools"]] == [t["name"] for t in TOOLS]
        assert all(_schema_rejection(t["input_schema"], t["name"]) is None for t in sent["tools"])
        assert any(c.startswith("tool schemas in the gemini dialect") for c in fitted.changes)

    def test_gemini_openai_preset_gets_clean_function_parameters(self) -> None:
        p = fit_provider("openai", preset="gemini-openai")
        fitted = fit_request(p, fit_request_of(claude_code_turn()), "gemini-2.5-pro")
        assert openai_rejection(json.loads(fitted.body), gemini_schema=True) is None
        assert openai_rejection(to_openai(claude_code_turn(), model="g").body, gemini_schema=True) is not None
        assert fitted.changes[0].startswith("tool schemas in the gemini dialect")

    def test_other_openai_providers_keep_the_schemas(self) -> None:
        fitted = fit_request(fit_provider("openai"), fit_request_of(claude_code_turn()), "gpt")
        params = [t["function"]["parameters"] for t in json.loads(fitted.body)["tools"]]
        assert params == [t["input_schema"] for t in TOOLS]


def fake_gemini(r: Received) -> Reply:
    """Gemini's OpenAI-compatible endpoint: 400 to a schema it cannot parse, else an answer."""
    why = openai_rejection(r.json(), gemini_schema=True)
    if why is not None:
        return error_reply(400, "invalid_request_error", why)
    return Reply(headers=SSE_HEADERS, steps=openai_text_stream(["Gemini ", "here."]))


async def test_claude_code_tools_reach_gemini_through_the_balancer(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """The real tool list to a gemini-openai provider: served, not a 400 for ``$schema``."""
    up = await FakeUpstream(fake_gemini).start(nursery)
    row = {
        "name": "g",
        "kind": "openai",
        "preset": "gemini-openai",
        "base_url": up.url + "/v1",
        "api_key": PROVIDER_KEY,
    }
    b = await balancer_for(config={"providers": [row]})
    r = await b.client.post("/v1/messages", json=claude_code_turn(), headers=NO_DEDUP)
    assert r.status_code == 200, r.text
    assert "Gemini " in r.text and "here." in r.text
    [sent] = up.received
    assert [t["function"]["name"] for t in sent.json()["tools"]] == [t["name"] for t in TOOLS]


async def test_a_huge_integer_bound_through_the_balancer_is_not_a_500(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """A 400-digit ``minimum`` in a tool schema once crashed the cleaner: the client got a 500."""
    up = await FakeUpstream(fake_gemini).start(nursery)
    row = {"name": "g", "kind": "openai", "preset": "gemini-openai", "base_url": up.url + "/v1",
           "api_key": PROVIDER_KEY}  # fmt: skip
    b = await balancer_for(config={"providers": [row]})
    schema = '{"type":"object","properties":{"n":{"type":"integer","minimum":1' + "0" * 400 + "}}}"
    raw = (
        '{"model":"claude-opus-4-6","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}],'
        '"tools":[{"name":"t","description":"d","input_schema":' + schema + "}]}"
    )
    r = await b.client.post(
        "/v1/messages", content=raw.encode(), headers={"content-type": "application/json", **NO_DEDUP}
    )
    assert r.status_code == 200, (r.status_code, r.text[:300])
    [sent] = up.received
    assert sent.json()["tools"][0]["function"]["parameters"]["properties"]["n"]["minimum"] == 10**400


async def test_anthropic_provider_in_the_gemini_dialect_gets_clean_schemas_and_the_default_the_bytes(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> None:
    """The capability alone decides: same tools, one provider rewritten, the other byte-identical."""
    plain = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    strict = await FakeUpstream(Reply(steps=anthropic_text_events(["ok"]))).start(nursery)
    raw = json.dumps(claude_code_turn()).encode()
    headers = {"content-type": "application/json", **NO_DEDUP}
    for up, extra in ((plain, {}), (strict, {"capabilities": {"schema_dialect": "gemini"}})):
        b = await balancer_for(up, **extra)
        r = await b.client.post("/v1/messages", content=raw, headers=headers)
        assert r.status_code == 200, r.text
    assert plain.received[0].body == raw
    schemas = [t["input_schema"] for t in strict.received[0].json()["tools"]]
    assert len(schemas) == len(TOOLS) and all(_schema_rejection(s, "t") is None for s in schemas)
