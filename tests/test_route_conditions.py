"""Routes with ``when`` conditions: the config, each condition, the first-match rule, and the
decision explained (response header, ledger, debug log) on real Claude Code requests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.config import ConfigError, Route, Target, When, parse_config
from trio_balancer.errors import NotFound
from trio_balancer.policy.conditions import check_when
from trio_balancer.policy.routing import Router, decide, find_route
from trio_balancer.protocol.request_facts import RequestFacts, facts_of
from trio_balancer.protocol.tokens import IMAGE_TOKENS, estimate_request

from .e2e.capture import load_fixtures
from .fakes import JSON_HEADERS, FakeUpstream, Reply, anthropic_message, anthropic_text_events
from .helpers import PROVIDER_KEY, Balancer, BalancerFactory, views

FIXTURES = dict(load_fixtures(Path(__file__).parent / "data" / "claude_code"))
PNG = "iVBORw0KGgo" + "A" * 40_000  # a 40 KB base64 "image"


def provider(name: str, url: str = "http://127.0.0.1:1") -> dict[str, Any]:
    return {"name": name, "kind": "anthropic", "base_url": url, "api_key": PROVIDER_KEY}


def one_route(**route: Any) -> dict[str, Any]:
    return {"providers": [provider("a")], "routes": [{"match": "*", "targets": [{"provider": "a"}], **route}]}


def facts(**kw: Any) -> RequestFacts:
    return RequestFacts(model=kw.pop("model", "claude-x"), **kw)


def fixture_facts(name: str, body: dict[str, Any] | None = None) -> RequestFacts:
    f = FIXTURES[name]
    body = f["body"] if body is None else body
    headers = [(k.encode(), v.encode()) for k, v in f["headers"].items()]
    return facts_of(body, headers, body_bytes=len(json.dumps(body, separators=(",", ":")).encode()))


class TestConfig:
    def test_when_table_read(self) -> None:
        c = parse_config(
            one_route(
                name="deep",
                when={
                    "thinking": True, "min_input_tokens": 10, "max_input_tokens": 20, "images": False,
                    "tools": ["Bash"], "server_tools": ["web_search"], "background": False,
                    "subagent": True, "client": ["alice"], "header": {"X-Team": "core*"},
                },
            )
        )  # fmt: skip
        when = c.routes[0].when
        assert c.routes[0].name == "deep"
        assert (when.thinking, when.min_input_tokens, when.max_input_tokens) == (True, 10, 20)
        assert (when.images, when.tools, when.server_tools) == (False, ("Bash",), ("web_search",))
        assert (when.background, when.subagent, when.client) == (False, True, ("alice",))
        assert when.header == {"X-Team": "core*"}

    def test_no_when_is_no_condition(self) -> None:
        route = parse_config(one_route()).routes[0]
        assert route.when == When() and route.when.empty and route.name is None

    def test_unknown_condition_named(self) -> None:
        with pytest.raises(ConfigError, match=r"routes\[0\]\.when\.thinkin: unknown key"):
            parse_config(one_route(when={"thinkin": True}))

    @pytest.mark.parametrize(
        ("when", "where"),
        [
            ({"thinking": "yes"}, r"when\.thinking: must be true or false"),
            ({"min_input_tokens": -1}, r"when\.min_input_tokens: must be between 0"),
            ({"tools": "Bash"}, r"when\.tools: must be a list of strings"),
            ({"header": {"x": 1}}, r"when\.header\.x: must be a string"),
        ],
    )
    def test_bad_values_named(self, when: dict[str, Any], where: str) -> None:
        with pytest.raises(ConfigError, match=where):
            parse_config(one_route(when=when))

    def test_name_is_a_header_value(self) -> None:
        with pytest.raises(ConfigError, match=r"routes\[0\]\.name: must be printable ASCII"):
            parse_config(one_route(name="dé\n"))


class TestConditions:
    def test_thinking(self) -> None:
        assert check_when(When(thinking=True), facts(thinking=True)).matched == ("thinking",)
        assert check_when(When(thinking=True), facts()).failed == ("thinking = true, the request: false",)
        assert check_when(When(thinking=False), facts()).matched == ("not thinking",)

    def test_token_bounds_inclusive(self) -> None:
        w = When(min_input_tokens=100, max_input_tokens=200)
        assert check_when(w, facts(input_tokens=100)).holds and check_when(w, facts(input_tokens=200)).holds
        assert check_when(w, facts(input_tokens=99)).failed == ("min_input_tokens 100 > 99",)
        assert check_when(w, facts(input_tokens=201)).failed == ("max_input_tokens 200 < 201",)

    def test_images(self) -> None:
        assert check_when(When(images=True), facts(images=True)).holds
        assert not check_when(When(images=True), facts()).holds

    def test_tools_all_present(self) -> None:
        f = facts(tools=frozenset({"Bash", "Read"}))
        assert check_when(When(tools=("Bash", "Read")), f).holds
        assert check_when(When(tools=("Bash", "Edit")), f).failed == ("tools: no Edit",)

    def test_server_tools_any_version(self) -> None:
        f = facts(server_tools=frozenset({"web_search_20250305"}))
        assert check_when(When(server_tools=("web_search",)), f).holds
        assert check_when(When(server_tools=("web_search_20250305",)), f).holds
        assert not check_when(When(server_tools=("web_search_20990101",)), f).holds
        assert not check_when(When(server_tools=("web_fetch",)), f).holds

    def test_background_and_subagent(self) -> None:
        assert check_when(When(background=True), facts(background=True)).holds
        assert not check_when(When(background=True), facts(subagent=True)).holds
        assert check_when(When(subagent=True, background=False), facts(subagent=True)).holds

    def test_client_any_of(self) -> None:
        assert check_when(When(client=("alice", "bob")), facts(client="bob")).holds
        assert check_when(When(client=("alice",)), facts(client="eve")).failed == (
            "client: 'eve' is not alice",
        )

    def test_header_glob_any_case_value_never_told(self) -> None:
        f = facts(headers={"x-team": "core-infra"})
        assert check_when(When(header={"X-Team": "core*"}), f).matched == ("header x-team",)
        assert check_when(When(header={"x-team": "web"}), f).failed == ("header x-team: does not match",)
        assert check_when(When(header={"x-other": "*"}), f).failed == ("header x-other: absent",)

    def test_every_condition_must_hold(self) -> None:
        verdict = check_when(When(thinking=True, images=True), facts(thinking=True))
        assert verdict.matched == ("thinking",) and not verdict.holds


class TestFacts:
    def test_thinking_kinds(self) -> None:
        def on(thinking: Any) -> bool:
            return facts_of({"model": "m", "thinking": thinking}, [], body_bytes=10).thinking

        assert on({"type": "enabled", "budget_tokens": 1024}) and on({"type": "adaptive"})
        assert not on({"type": "disabled"}) and not on(None)

    def test_images_in_tool_results_and_documents(self) -> None:
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
        result = {"type": "tool_result", "tool_use_id": "t", "content": [image]}
        body = {"model": "m", "messages": [{"role": "user", "content": [result]}]}
        f = facts_of(body, [], body_bytes=len(json.dumps(body)))
        assert f.images
        # the base64 data counts as one image, not as 10,000 tokens of text
        assert IMAGE_TOKENS <= f.input_tokens < IMAGE_TOKENS + 100
        assert fixture_facts("synthetic-document-pdf").images

    def test_tools_and_server_tools(self) -> None:
        web = fixture_facts("synthetic-web-search")
        assert web.server_tools == {"web_search_20250305"} and not web.tools
        main = fixture_facts("2.1.332/tools-1")
        assert {"Bash", "Agent"} <= main.tools and not main.server_tools

    def test_headers_lower_case_repeats_joined(self) -> None:
        f = facts_of({"model": "m"}, [(b"X-A", b" 1 "), (b"x-a", b"2")], client="c", body_bytes=1)
        assert f.headers == {"x-a": "1, 2"} and f.client == "c"

    @pytest.mark.parametrize("name", [n for n in FIXTURES if not n.startswith("synthetic")])
    def test_token_estimate_close_to_the_full_one(self, name: str) -> None:
        """On real Claude Code bodies the cheap estimate is within 10% of estimate_request's."""
        full = estimate_request(FIXTURES[name]["body"])
        assert abs(fixture_facts(name).input_tokens - full) <= 0.1 * full + 50


# -- the first-match rule, checked over random configs -----------------------------------------

MODELS = ("claude-opus-5", "claude-haiku-4-5", "gpt-5")
whens = st.builds(
    When,
    thinking=st.none() | st.booleans(),
    min_input_tokens=st.none() | st.integers(0, 1000),
    max_input_tokens=st.none() | st.integers(0, 1000),
    images=st.none() | st.booleans(),
    tools=st.lists(st.sampled_from(["Bash", "Read"]), max_size=2).map(tuple),
    background=st.none() | st.booleans(),
    client=st.lists(st.sampled_from(["alice", "bob"]), max_size=2).map(tuple),
    header=st.dictionaries(st.sampled_from(["x-team"]), st.sampled_from(["a", "b*"]), max_size=1),
)
globs = st.sampled_from(["*", "claude-*", "claude-haiku-*", "gpt-5", "nothing"])
request_facts = st.builds(
    RequestFacts,
    model=st.sampled_from(MODELS),
    thinking=st.booleans(),
    input_tokens=st.integers(0, 1000),
    images=st.booleans(),
    tools=st.frozensets(st.sampled_from(["Bash", "Read", "Edit"])),
    background=st.booleans(),
    client=st.sampled_from(["alice", "bob", "eve"]),
    headers=st.dictionaries(st.sampled_from(["x-team"]), st.sampled_from(["a", "b", "bc"]), max_size=1),
)


def config_of(routes: list[tuple[str, When]]) -> Any:
    c = parse_config({"providers": [provider("a")]})
    made = tuple(Route(match=g, targets=(Target("a"),), when=w) for g, w in routes)
    return type(c)(server=c.server, providers=c.providers, routes=made)


class TestFirstMatch:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(globs, whens), min_size=1, max_size=6), request_facts)
    def test_first_route_whose_glob_and_conditions_hold(
        self, routes: list[tuple[str, When]], f: RequestFacts
    ) -> None:
        from fnmatch import fnmatchcase

        config = config_of(routes)
        holding = [i for i, (g, w) in enumerate(routes) if fnmatchcase(f.model, g) and check_when(w, f).holds]
        decision = decide(config, f)
        if not holding:
            assert decision is None
            return
        assert decision is not None and decision.route is config.routes[holding[0]]
        assert decision.label == str(holding[0])
        assert [label for label, _ in decision.passed_over] == [str(i) for i in range(holding[0])]
        assert decision.matched[0] == f"match {routes[holding[0]][0]}"

    @settings(max_examples=200, deadline=None)
    @given(st.lists(globs, min_size=1, max_size=6), request_facts)
    def test_routes_without_when_as_before(self, routes: list[str], f: RequestFacts) -> None:
        """Without conditions the route is the old find_route's, and so is the plan."""
        config = config_of([(g, When()) for g in routes])
        old = find_route(config, f.model)
        decision = decide(config, f)
        assert (decision.route if decision else None) is old
        if old is not None:
            router = Router(config)
            assert router.plan(f.model, views(config), now=0.0) == router.plan(
                f.model, views(config), now=0.0, route=router.decide(f).route
            )

    def test_no_route_takes_it(self) -> None:
        config = config_of([("claude-*", When(thinking=True))])
        with pytest.raises(NotFound, match="its conditions"):
            Router(config).decide(facts())
        with pytest.raises(NotFound, match="no route serves model 'gpt-5'"):
            Router(config).decide(facts(model="gpt-5"))


# -- through the balancer, on captured Claude Code requests -------------------------------------

TARGETS = ("cheap", "sub", "long", "vision", "deep", "main")


def routing_config(upstreams: dict[str, FakeUpstream]) -> dict[str, Any]:
    def route(name: str | None, target: str, match: str = "*", **when: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"match": match, "targets": [{"provider": target}], "when": when}
        return row if name is None else {**row, "name": name}

    return {
        "providers": [provider(n, u.url) for n, u in upstreams.items()],
        "routes": [
            route("background", "cheap", "*haiku*", background=True),
            route("subagent", "sub", subagent=True),
            route("long", "long", min_input_tokens=60_000),
            route("images", "vision", images=True),
            route("thinking", "deep", thinking=True),
            route(None, "main"),
        ],
    }


def image_turn() -> dict[str, Any]:
    body = copy.deepcopy(FIXTURES["1.0.128/plain-1"]["body"])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body["messages"][-1]["content"].append(image)
    return body


def long_prompt() -> dict[str, Any]:
    """The main turn with a pasted log of about 100k tokens."""
    body = copy.deepcopy(FIXTURES["1.0.128/plain-1"]["body"])
    log = "\n".join(
        f"2026-12-02T10:{i % 60:02d} worker {i} finished job {i * 7} in {i % 97} ms" for i in range(4_500)
    )
    body["messages"][-1]["content"].append({"type": "text", "text": log})
    return body


CASES = [
    ("1.0.128/plain-1", None, "main", "5", "match *"),
    ("1.0.128/tools-2", None, "cheap", "background", "match *haiku*; background"),
    ("2.0.77/plain-3", None, "sub", "subagent", "match *; subagent"),
    ("2.0.77/thinking-1", None, "deep", "thinking", "match *; thinking"),
    ("1.0.128/plain-1", image_turn, "vision", "images", "match *; images"),
    ("1.0.128/plain-1", long_prompt, "long", "long", "match *; min_input_tokens 60000 <= "),
]


@pytest.fixture
async def routed(
    nursery: trio.Nursery, balancer_for: BalancerFactory
) -> tuple[Balancer, dict[str, FakeUpstream]]:
    upstreams = {n: await FakeUpstream().start(nursery) for n in TARGETS}
    for name, u in upstreams.items():
        u.script(Reply(steps=anthropic_text_events([f"from {name}"])))
    return await balancer_for(config=routing_config(upstreams)), upstreams


class TestThroughTheBalancer:
    @pytest.mark.parametrize(("fixture", "make", "target", "label", "why"), CASES)
    async def test_captured_request_routed(
        self,
        routed: tuple[Balancer, dict[str, FakeUpstream]],
        fixture: str,
        make: Any,
        target: str,
        label: str,
        why: str,
    ) -> None:
        b, upstreams = routed
        f = FIXTURES[fixture]
        body = make() if make else f["body"]
        headers = {k: v for k, v in f["headers"].items() if k != "content-length"}
        r = await b.client.post(f["path"], content=json.dumps(body).encode(), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-balancer-route"] == label
        assert f"from {target}" in r.text
        assert [n for n, u in upstreams.items() if u.received] == [target]
        (row,) = await b.ledger_rows(1)
        assert row["route"] == label and row["route_why"].startswith(why)

    async def test_long_prompt_is_about_100k_tokens(self) -> None:
        body = long_prompt()
        estimated = facts_of(body, [], body_bytes=len(json.dumps(body).encode())).input_tokens
        assert 90_000 < estimate_request(body) < 130_000  # the full estimate
        assert 60_000 < estimated < estimate_request(body)  # digits: fewer bytes a token

    async def test_header_on_json_followers_and_cache_hits(
        self, routed: tuple[Balancer, dict[str, FakeUpstream]]
    ) -> None:
        b, upstreams = routed
        upstreams["deep"].script(
            Reply(headers=list(JSON_HEADERS), steps=[json.dumps(anthropic_message("from deep")).encode()])
        )
        async with anthropic.AsyncAnthropic(base_url=b.url, api_key="x", max_retries=0) as client:
            answers = []
            for _ in range(2):
                raw = await client.messages.with_raw_response.create(
                    model="claude-opus-5",
                    max_tokens=64,
                    thinking={"type": "enabled", "budget_tokens": 32},
                    messages=[{"role": "user", "content": "think"}],
                )
                answers.append(raw)
        assert [a.headers["x-balancer-route"] for a in answers] == ["thinking", "thinking"]
        assert [a.headers["x-balancer-dedup"] for a in answers] == ["leader", "cache"]
        assert len(upstreams["deep"].received) == 1
        rows = await b.ledger_rows(2)
        assert {(r["dedup_role"], r["route"], r["route_why"]) for r in rows} == {
            ("leader", "thinking", "match *; thinking"),
            ("cache", "thinking", "match *; thinking"),
        }

    async def test_debug_log_says_why_earlier_routes_did_not_match(
        self, routed: tuple[Balancer, dict[str, FakeUpstream]], captured: list[dict[str, Any]]
    ) -> None:
        b, _ = routed
        f = FIXTURES["2.0.77/thinking-1"]
        headers = {k: v for k, v in f["headers"].items() if k != "content-length"}
        r = await b.client.post(f["path"], content=json.dumps(f["body"]).encode(), headers=headers)
        assert r.status_code == 200
        passed = {e["route"]: e["why"] for e in captured if e["event"] == "route.passed_over"}
        assert passed["background"] == "model 'claude-sonnet-4-5-20250929' does not match '*haiku*'"
        assert passed["subagent"] == "subagent = true, the request: false"
        assert passed["long"].startswith("min_input_tokens 60000 > ")
        assert passed["images"] == "images = true, the request: false"
        chosen = [e for e in captured if e["event"] == "route.chosen"]
        assert chosen[-1]["route"] == "thinking" and chosen[-1]["why"] == "match *; thinking"


# -- trio-balancer route ------------------------------------------------------------------------

CLI_CONFIG = """
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "passthrough"

[[providers]]
name = "cheap"
kind = "openai"
preset = "deepseek"
base_url = "https://api.deepseek.com"
api_key = "sk-x"

[[routes]]
name = "background"
match = "*haiku*"
when = { background = true }
targets = [{ provider = "cheap", model = "deepseek-chat" }]

[[routes]]
name = "team"
match = "*"
when = { header = { x-team = "core*" }, client = ["alice"] }
targets = [{ provider = "anthropic" }]

[[routes]]
name = "thinking"
match = "claude-*"
when = { thinking = true }
targets = [{ provider = "cheap", model = "deepseek-reasoner" }, { provider = "anthropic" }]
"""


class TestRouteCommand:
    def run(self, tmp_path: Path, capsys: Any, saved: Any, *args: str) -> tuple[int, str]:
        """``trio-balancer route`` on ``saved``: its exit code, and its output (stdout, then stderr)."""
        from trio_balancer.cli import main

        (tmp_path / "c.toml").write_text(CLI_CONFIG)
        (tmp_path / "r.json").write_text(json.dumps(saved))
        code = main(["route", "--config", str(tmp_path / "c.toml"), str(tmp_path / "r.json"), *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    def test_decision_and_plan_of_a_capture(self, tmp_path: Path, capsys: Any) -> None:
        code, out = self.run(tmp_path, capsys, FIXTURES["2.0.77/thinking-1"])
        assert code == 0
        assert out.splitlines()[2:] == [
            "passed over background: model 'claude-sonnet-4-5-20250929' does not match '*haiku*'",
            "passed over team: client: '' is not alice; header x-team: absent",
            "route: thinking (match claude-*; thinking)",
            "failover plan (priority; every provider healthy):",
            "  1. cheap: deepseek-reasoner",
            "  2. anthropic: claude-sonnet-4-5-20250929",
        ]
        assert out.startswith("request: model claude-sonnet-4-5-20250929, ~17") and ", thinking" in out

    def test_client_and_headers_given(self, tmp_path: Path, capsys: Any) -> None:
        body = FIXTURES["2.0.77/thinking-1"]["body"]
        code, out = self.run(tmp_path, capsys, body, "--client", "alice", "--header", "X-Team: core-infra")
        assert code == 0 and "route: team (match *; client alice; header x-team)" in out

    def test_skipped_provider_shown(self, tmp_path: Path, capsys: Any) -> None:
        code, out = self.run(tmp_path, capsys, FIXTURES["synthetic-web-search"])
        assert code == 0
        assert "  1. anthropic: claude-opus-4-6" in out
        assert "  skipped cheap: does not run the server tool web_search_20250305 (tools[0])" in out

    def test_no_route(self, tmp_path: Path, capsys: Any) -> None:
        code, out = self.run(tmp_path, capsys, {"model": "gpt-5", "messages": []})
        assert code == 1 and "refused: no route takes this request for model 'gpt-5' (its conditions)" in out

    def test_not_a_request(self, tmp_path: Path, capsys: Any) -> None:
        code, out = self.run(tmp_path, capsys, [1, 2])
        assert code == 2 and "cannot read" in out and "must be a JSON object" in out
