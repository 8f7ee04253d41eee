"""Claude on Bedrock and on Vertex AI, and Gemini, through the simulator's dialects, seen by the official SDK.

The simulator checks what the real services check: Bedrock requests are SigV4-signed with a key
it knows, Vertex requests carry an access token its token endpoint issued for a JWT assertion
signed by the test service account's key, Gemini requests carry a key it knows and a body
Gemini would take (roles, function call/response pairing, schema keys, thought signatures).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import pytest
import trio

from trio_balancer.config import ConfigError, parse_config
from trio_balancer.tools import simulator
from trio_balancer.tools.sim_bedrock import SIM_AWS_KEY_ID, SIM_AWS_SECRET
from trio_balancer.tools.sim_vertex import make_service_account

from .helpers import CLIENT_KEY, PROVIDER_KEY, Balancer, BalancerFactory

GEMINI_KEY = "AIzaSy-sim-gemini-key-0000000000000000"
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello"}],
}
TOOLS: list[Any] = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]


class Cloud:
    def __init__(self, sim: simulator.Simulator, url: str, account: Path) -> None:
        self.sim, self.url, self.account = sim, url, account

    def bedrock(self, name: str = "bedrock", **extra: Any) -> dict[str, Any]:
        return {"name": name, "kind": "bedrock", "region": "us-east-1", "base_url": self.url, **extra}

    def gemini(self, name: str = "gemini", **extra: Any) -> dict[str, Any]:
        return {"name": name, "kind": "gemini", "base_url": self.url, "api_key": GEMINI_KEY, **extra}

    def vertex(self, name: str = "vertex", **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "vertex",
            "project": "sim-project",
            "region": "us-east5",
            "base_url": self.url,
            "service_account_file": str(self.account),
            **extra,
        }


@pytest.fixture
async def cloud(nursery: trio.Nursery, tmp_path: Path, aws_env: None) -> Cloud:
    sim = simulator.Simulator(simulator.SimOptions(eps=0, events=3))
    port = await nursery.start(partial(simulator.serve, sim))
    url = f"http://127.0.0.1:{port}"
    account = tmp_path / "account.json"
    email, public = make_service_account(account, f"{url}/token")
    sim.google_keys[email] = public
    sim.gemini_keys = frozenset({GEMINI_KEY})
    return Cloud(sim, url, account)


def sdk(b: Balancer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=b.url, api_key=CLIENT_KEY, max_retries=0)


async def streamed(b: Balancer, **extra: Any) -> anthropic.types.Message:
    async with sdk(b) as client, client.messages.stream(**{**BODY, **extra}) as s:
        return await s.get_final_message()


@pytest.mark.parametrize("kind", ["bedrock", "vertex", "gemini"])
class TestEachCloud:
    async def test_a_stream_arrives_whole_with_the_clients_model_and_exact_usage(
        self, cloud: Cloud, balancer_for: BalancerFactory, kind: str
    ) -> None:
        b = await balancer_for(config={"providers": [getattr(cloud, kind)()]})
        message = await streamed(b)
        assert message.model == BODY["model"]
        assert message.content[0].type == "text" and message.content[0].text
        assert message.stop_reason == "end_turn"
        assert message.usage.input_tokens > 0 and message.usage.output_tokens == 3 * 4

    async def test_a_json_answer(self, cloud: Cloud, balancer_for: BalancerFactory, kind: str) -> None:
        b = await balancer_for(config={"providers": [getattr(cloud, kind)()]})
        async with sdk(b) as client:
            message = await client.messages.create(**BODY)
        assert message.model == BODY["model"] and message.stop_reason == "end_turn"
        assert message.usage.output_tokens == 12

    async def test_tool_calls_stream_as_tool_use_blocks(
        self, cloud: Cloud, balancer_for: BalancerFactory, kind: str
    ) -> None:
        row = getattr(cloud, kind)(headers={"x-sim-tools": "2"})
        b = await balancer_for(config={"providers": [row]})
        message = await streamed(b, tools=TOOLS)
        uses = [c for c in message.content if c.type == "tool_use"]
        assert [u.input for u in uses] == [
            {"path": "notes/0.md", "limit": 20},
            {"path": "notes/1.md", "limit": 20},
        ]
        assert message.stop_reason == "tool_use"

    async def test_count_tokens_is_the_clouds_count(
        self, cloud: Cloud, balancer_for: BalancerFactory, kind: str
    ) -> None:
        b = await balancer_for(config={"providers": [getattr(cloud, kind)()]})
        r = await b.client.post(
            "/v1/messages/count_tokens", json={k: v for k, v in BODY.items() if k != "max_tokens"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["input_tokens"] > 0 and "x-balancer-estimated" not in r.headers

    async def test_a_throttled_cloud_is_a_rate_limit_error_without_its_headers(
        self, cloud: Cloud, balancer_for: BalancerFactory, kind: str
    ) -> None:
        b = await balancer_for(config={"providers": [getattr(cloud, kind)(headers={"x-sim-status": "429"})]})
        r = await b.client.post("/v1/messages", json=BODY)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert not any(h.startswith("x-amzn") for h in r.headers)

    async def test_a_client_that_leaves_closes_the_upstream(
        self, cloud: Cloud, balancer_for: BalancerFactory, kind: str
    ) -> None:
        row = getattr(cloud, kind)(headers={"x-sim-eps": "20", "x-sim-events": "400"})
        b = await balancer_for(config={"providers": [row]})
        async with b.client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as r:
            async for line in r.aiter_lines():
                if "text_delta" in line:
                    break
        with trio.fail_after(5):
            await cloud.sim.wait_inactive()


async def test_bedrock_is_sent_its_own_body_signed(cloud: Cloud, balancer_for: BalancerFactory) -> None:
    """The simulator refuses a body with model or stream, a wrong anthropic_version, a bad
    signature: a 200 means all were right. A wrong secret is the provider's auth failure."""
    b = await balancer_for(config={"providers": [cloud.bedrock()]})
    assert (await b.client.post("/v1/messages", json={**BODY, "stream": True})).status_code == 200
    cloud.sim.aws_keys[SIM_AWS_KEY_ID] = "another-secret"
    r = await b.client.post("/v1/messages", json={**BODY, "max_tokens": 65})
    assert r.status_code == 502 and r.json()["error"]["type"] == "api_error", r.text
    assert SIM_AWS_SECRET not in r.text and SIM_AWS_KEY_ID not in r.text


async def test_vertex_fetches_one_token_for_many_requests(
    cloud: Cloud, balancer_for: BalancerFactory
) -> None:
    b = await balancer_for(config={"providers": [cloud.vertex()]})
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(streamed, b)
    assert cloud.sim.token_requests == 1


async def test_an_unknown_service_account_fails_over(
    cloud: Cloud, balancer_for: BalancerFactory, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.json"
    make_service_account(stranger, f"{cloud.url}/token", email="stranger@x.iam.gserviceaccount.com")
    rows = [cloud.vertex("v1", service_account_file=str(stranger)), cloud.bedrock()]
    b = await balancer_for(config={"providers": rows})
    r = await b.client.post("/v1/messages", json=BODY)
    assert r.status_code == 200, r.text
    assert (await b.ledger_rows(1))[0]["provider"] == "bedrock"


async def test_missing_aws_credentials_fail_over(
    cloud: Cloud, balancer_for: BalancerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    b = await balancer_for(config={"providers": [cloud.bedrock(), cloud.vertex()]})
    r = await b.client.post("/v1/messages", json=BODY)
    assert r.status_code == 200, r.text
    assert (await b.ledger_rows(1))[0]["provider"] == "vertex"


async def test_an_error_in_a_bedrock_stream_before_content_fails_over(
    cloud: Cloud, balancer_for: BalancerFactory
) -> None:
    rows = [cloud.bedrock(headers={"x-sim-error-after": "0"}), cloud.vertex()]
    b = await balancer_for(config={"providers": rows})
    message = await streamed(b)
    assert message.stop_reason == "end_turn"


async def test_a_bedrock_model_error_fails_over(cloud: Cloud, balancer_for: BalancerFactory) -> None:
    """424 ModelErrorException: the model failed on Bedrock, not the request (found by review)."""
    b = await balancer_for(
        config={"providers": [cloud.bedrock(headers={"x-sim-status": "424"}), cloud.vertex()]}
    )
    r = await b.client.post("/v1/messages", json=BODY)
    assert r.status_code == 200, r.text
    assert (await b.ledger_rows(1))[0]["provider"] == "vertex"


async def test_anthropic_overloaded_then_bedrock_throttled_then_vertex_serves_the_tool_loop(
    cloud: Cloud, balancer_for: BalancerFactory, tmp_path: Path
) -> None:
    """The failover the issue asks for: one clean answer, recorded under the provider that served."""
    config = {
        "ledger": {"url": f"sqlite:///{tmp_path}/l.sqlite3"},
        "providers": [
            {"name": "anthropic", "kind": "anthropic", "base_url": cloud.url, "api_key": PROVIDER_KEY,
             "headers": {"x-sim-status": "529"}},
            cloud.bedrock(headers={"x-sim-status": "429"}),
            cloud.vertex(headers={"x-sim-tools": "1"}),
        ],
    }  # fmt: skip
    b = await balancer_for(config=config)
    message = await streamed(b, tools=TOOLS)
    assert message.stop_reason == "tool_use" and message.model == BODY["model"]
    follow_up = [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": message.content[-1].id, "content": "ok"}],
        },  # type: ignore[union-attr]
    ]
    second = await streamed(b, tools=TOOLS, messages=follow_up)
    assert second.content
    rows = await b.ledger_rows(2)
    assert {r["provider"] for r in rows} == {"vertex"}
    assert all(
        r["output_tokens"] > 0
        and r["usage_source"] not in ("partial", "estimated", "none")
        and r["cost_usd"] > 0
        for r in rows
    ), rows


def test_without_the_extras_the_config_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore", None)
    monkeypatch.setitem(sys.modules, "google.auth", None)
    for row, extra in (
        ({"name": "b", "kind": "bedrock", "region": "us-east-1"}, "[aws]"),
        ({"name": "v", "kind": "vertex", "project": "p", "region": "global"}, "[gcp]"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config({"providers": [row]})
        assert f"pip install 'trio-balancer{extra}'" in str(info.value)


def test_default_endpoints() -> None:
    config = parse_config(
        {
            "providers": [
                {"name": "b", "kind": "bedrock", "region": "eu-west-1"},
                {"name": "v", "kind": "vertex", "project": "p", "region": "us-east5"},
                {"name": "g", "kind": "vertex", "project": "p", "region": "global"},
            ]
        }
    )
    assert [p.base_url for p in config.providers] == [
        "https://bedrock-runtime.eu-west-1.amazonaws.com",
        "https://us-east5-aiplatform.googleapis.com",
        "https://aiplatform.googleapis.com",
    ]


async def test_a_token_endpoint_that_never_answers_fails_over_within_the_deadline(
    cloud: Cloud, balancer_for: BalancerFactory, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Found by attack: the token fetch waited past every provider deadline, on Trio's shared threads."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)  # read nothing, answer nothing
        await trio.sleep_forever()

    nursery.start_soon(partial(trio.serve_listeners, hold, listeners))
    port = listeners[0].socket.getsockname()[1]
    silent = tmp_path / "silent.json"
    make_service_account(silent, f"http://127.0.0.1:{port}/token")
    rows = [
        cloud.vertex("v1", service_account_file=str(silent), timeouts={"connect": 0.2, "total": 1.0}),
        cloud.bedrock(),
    ]
    b = await balancer_for(config={"providers": rows})
    r = await b.client.post("/v1/messages", json=BODY)
    assert r.status_code == 200, r.text
    assert (await b.ledger_rows(1))[0]["provider"] == "bedrock"
    for stream in accepted:
        await stream.aclose()


@pytest.mark.parametrize("kind", ["bedrock", "gemini"])
async def test_a_configured_header_replaces_the_familys_own(kind: str, aws_env: None) -> None:
    """Bedrock's and Gemini's own headers (accept, content-type) are replaced by a provider's
    ``headers`` of the same name, never sent twice (a second ``accept`` line is read differently
    by different servers), and Bedrock signs what is sent."""
    from trio_balancer.upstream.families import make_family
    from trio_balancer.upstream.request import UpstreamRequest

    row = {"name": "c", "kind": kind, "base_url": "http://127.0.0.1:9", "headers": {"Accept": "text/x-test"}}
    row |= {"region": "us-east-1"} if kind == "bedrock" else {"api_key": GEMINI_KEY}
    (provider,) = parse_config({"providers": [row]}).providers
    payload = {**BODY, "stream": True}
    request = UpstreamRequest(
        path="/v1/messages",
        query=b"",
        headers=(),
        body=b"{}",
        payload=payload,
        model=BODY["model"],
        stream=True,
    )
    out = await make_family(provider).outbound(request, BODY["model"])
    accepts = [v for n, v in out.headers if n.lower() == b"accept"]
    assert accepts == [b"text/x-test"]
    if kind == "bedrock":
        signed = {n.lower(): v for n, v in out.headers}[b"authorization"].decode()
        assert "accept" in signed.split("SignedHeaders=")[1]
