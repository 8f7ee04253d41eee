"""What an attack on the issue-15 restructure found, each pinned.

Changed by the restructure and restored: the documented Hypercorn entry point, a request
whose handler fails after its response was delivered, the warning for an empty ``data:``.
Older bugs found on the way: a provider's key echoed in a stream error reached the ledger and
the client's final error; the scrubber took quadratic time on long runs of letters. And the
counters' one meaning: ``events`` and ``bytes`` are what the client was sent.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import hypercorn.config
import hypercorn.utils
import pytest
import trio

from trio_balancer.flight import Flight
from trio_balancer.redaction import REDACTED, scrub

from .fakes import (
    JSON_HEADERS,
    SSE_HEADERS,
    FakeUpstream,
    Reply,
    anthropic_error,
    anthropic_message,
    anthropic_text_events,
    sse,
)
from .helpers import BODY, JSON_BODY, PROVIDER_KEY, Balancer, BalancerFactory


def ledger_config(tmp_path: Path, *upstreams: FakeUpstream, kinds: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "ledger": {"url": f"sqlite:///{tmp_path}/ledger.sqlite3"},
        "dedup": {"enabled": False},
        "providers": [
            {
                "name": f"p{i}",
                "kind": kinds[i] if i < len(kinds) else "anthropic",
                "base_url": u.url,
                "api_key": PROVIDER_KEY,
            }
            for i, u in enumerate(upstreams)
        ],
    }


class TestEntryPoint:
    def test_the_documented_hypercorn_path_loads_the_app(self) -> None:
        """``hypercorn --worker-class trio 'trio_balancer.asgi:create_app()'`` as the README says."""
        assert callable(importlib.import_module("trio_balancer.asgi").create_app)
        config = hypercorn.config.Config()
        config.application_path = "trio_balancer.asgi:create_app()"
        app = hypercorn.utils.load_application(config.application_path, config.wsgi_max_body_size)
        assert app is not None


class TestRecords:
    async def test_a_failure_after_the_whole_response_keeps_it_delivered(
        self,
        nursery: trio.Nursery,
        balancer_for: BalancerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        real = Flight.unsubscribe

        def unsubscribe(self: Flight, listener: Any) -> None:
            real(self, listener)
            raise RuntimeError("a bug after the response was delivered")

        monkeypatch.setattr(Flight, "unsubscribe", unsubscribe)
        wire = b"".join(anthropic_text_events(["Hello"]))
        upstream = await FakeUpstream(Reply(headers=SSE_HEADERS, steps=[wire])).start(nursery)
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        r = await b.client.post("/v1/messages", json=BODY)
        assert r.status_code == 200 and r.content == wire
        (record,) = await b.ledger_rows(1)
        assert (record["status"], record["outcome"]) == (200, "delivered")

    @pytest.mark.parametrize("kind", ["anthropic", "openai"])
    async def test_a_json_answer_counts_the_body_the_client_got_and_no_events(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, tmp_path: Path, kind: str
    ) -> None:
        body = (
            json.dumps(anthropic_message("Hello")).encode()
            if kind == "anthropic"
            else json.dumps(
                {
                    "id": "c1",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hey"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                }
            ).encode()
        )
        upstream = await FakeUpstream(Reply(headers=JSON_HEADERS, steps=[body])).start(nursery)
        b = await balancer_for(config=ledger_config(tmp_path, upstream, kinds=(kind,)))
        r = await b.client.post("/v1/messages", json=JSON_BODY)
        assert r.status_code == 200
        (record,) = await b.ledger_rows(1)
        assert (record["events"], record["bytes"]) == (0, len(r.content))

    async def test_a_stream_that_failed_over_counts_what_the_client_got(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        """The first provider's held events (before its error) reached nobody: not counted."""
        events = anthropic_text_events(["a", "b"])
        overloaded = anthropic_error("overloaded_error", "busy")
        first = await FakeUpstream(
            Reply(headers=SSE_HEADERS, steps=[events[0], sse("error", json.loads(overloaded))])
        ).start(nursery)
        second = await FakeUpstream(Reply(headers=SSE_HEADERS, steps=[b"".join(events)])).start(nursery)
        b = await balancer_for(config=ledger_config(tmp_path, first, second))
        r = await b.client.post("/v1/messages", json=BODY)
        assert r.status_code == 200
        (record,) = await b.ledger_rows(1)
        assert (record["events"], record["bytes"]) == (len(events), len(r.content))


class TestLogs:
    async def test_an_empty_data_payload_is_warned_about(
        self,
        nursery: trio.Nursery,
        balancer: Balancer,
        upstream: FakeUpstream,
        captured: list[dict[str, Any]],
    ) -> None:
        events = anthropic_text_events(["q"])
        upstream.script(Reply(headers=SSE_HEADERS, steps=[events[0], b"event: ping\ndata:\n\n", *events[1:]]))
        r = await balancer.client.post("/v1/messages", json=BODY)
        assert r.status_code == 200
        await balancer.wait_idle()
        assert [e for e in captured if e["event"] == "upstream.malformed_event"]


def echoed_key_error() -> bytes:
    message = f"Incorrect API key provided: {PROVIDER_KEY}"
    return sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": message}})


class TestEchoedKeys:
    async def test_a_key_in_a_stream_error_never_reaches_the_final_error(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, tmp_path: Path
    ) -> None:
        start = anthropic_text_events(["x"])[0]
        first = await FakeUpstream(Reply(headers=SSE_HEADERS, steps=[start, echoed_key_error()])).start(
            nursery
        )
        busy = anthropic_error("overloaded_error", "busy")
        second = await FakeUpstream(Reply(status=529, headers=JSON_HEADERS, steps=[busy])).start(nursery)
        b = await balancer_for(config=ledger_config(tmp_path, first, second))
        r = await b.client.post("/v1/messages", json=BODY)
        assert r.status_code == 529 and PROVIDER_KEY not in r.text
        (record,) = await b.ledger_rows(1)
        assert PROVIDER_KEY not in json.dumps(record)

    @pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
    async def test_a_key_in_a_stream_error_never_reaches_the_ledger(
        self, nursery: trio.Nursery, balancer_for: BalancerFactory, tmp_path: Path, after_commit: bool
    ) -> None:
        events = anthropic_text_events(["hello"])
        steps = [*events[:4], echoed_key_error()] if after_commit else [events[0], echoed_key_error()]
        upstream = await FakeUpstream(Reply(headers=SSE_HEADERS, steps=steps)).start(nursery)
        b = await balancer_for(config=ledger_config(tmp_path, upstream))
        r = await b.client.post("/v1/messages", json=BODY)
        assert PROVIDER_KEY not in r.text
        (record,) = await b.ledger_rows(1)
        assert PROVIDER_KEY not in json.dumps(record)


class TestScrubber:
    @pytest.mark.parametrize(
        "text", ["a" * 256 * 1024, "eyJ1" * 65536, "eyJa" * 65536, "0" * 256 * 1024, "secret=" * 37000]
    )
    def test_what_used_to_take_minutes_is_one_pass(self, text: str) -> None:
        """An error body a provider may send (256 KB): as one regex with per-position lookaheads
        (and a JWT shape retried inside each run) these took seconds to minutes, on the event
        loop. Each now finishes in one pass (no time is asserted: a regression hangs here)."""
        clean = scrub(text)
        assert clean == text or REDACTED in clean

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("0" + "a" * 25 + 'secret=secret":abcdef', "[redacted]=[redacted]"),
            ("0" + "a" * 25 + "secret=Bearer 12345678", "[redacted]=[redacted]"),
            (
                "0" + "a" * 22 + "eyJaaaaaaaa.bbbbbbbb.Bearer opaqueTOKENvalue",
                "[redacted].bbbbbbbb.[redacted]",
            ),
        ],
    )
    def test_a_shape_after_a_long_run_is_found_from_the_runs_end(self, text: str, expected: str) -> None:
        """The long run is one match; the scan goes on after it, as it always did."""
        assert scrub(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "x" * 40 + "sk-ant-abcdefghijkl",  # a prefixed key inside a run of letters
            "B0O0t1s3FSD2AA_IcjYuexzhShf_oabPZMGwIbYjZhpWlBmlZBLXTRVWifh1",  # a key inside a mixed run
            "Bearer " + "x" * 40 + "8Anm.f3JC3h",  # a bearer token past a run
        ],
    )
    def test_a_key_inside_or_around_a_run_is_redacted_whole(self, text: str) -> None:
        clean = scrub(text)
        assert REDACTED in clean and not any(c.isdigit() for c in clean.replace(REDACTED, ""))
