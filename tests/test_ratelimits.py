"""Rate-limit and retry-after header parsing, Anthropic and OpenAI styles."""

from __future__ import annotations

import pytest

from trio_balancer.policy.failover import classify_error_type, classify_status
from trio_balancer.policy.health import FailureKind
from trio_balancer.policy.ratelimits import RateLimitState, parse_duration, read_headers, retry_after_seconds

WALL = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("20", 20.0),
        ("soon", None),
        ("5x", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_retry_after_forms() -> None:
    assert retry_after_seconds([("retry-after", "17")], WALL) == 17.0
    assert retry_after_seconds([("retry-after-ms", "1500")], WALL) == 1.5
    assert retry_after_seconds([("retry-after", "Fri, 15 Jan 2027 08:00:30 GMT")], WALL) == pytest.approx(
        30.0
    )
    reset = [
        ("anthropic-ratelimit-requests-reset", "2027-01-15T08:00:12Z"),
        ("anthropic-ratelimit-tokens-reset", "2027-01-15T08:00:05Z"),
    ]
    assert retry_after_seconds(reset, WALL) == pytest.approx(12.0)
    assert retry_after_seconds([("x-ratelimit-reset-requests", "6m0s")], WALL) == 360.0
    assert retry_after_seconds([("content-type", "x")], WALL) is None


def test_anthropic_readings() -> None:
    headers = [
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-requests-reset", "2027-01-15T08:00:30Z"),
        ("anthropic-ratelimit-input-tokens-limit", "40000"),
        ("anthropic-ratelimit-input-tokens-remaining", "39000"),
        ("anthropic-ratelimit-input-tokens-reset", "2027-01-15T08:00:01Z"),
    ]
    r = read_headers(headers, now=100.0, now_wall=WALL)
    assert r["requests"].remaining == 49 and r["requests"].limit == 50
    assert r["requests"].reset_at == pytest.approx(130.0)
    assert r["input-tokens"].reset_at == pytest.approx(101.0)


def test_openai_readings_and_pressure() -> None:
    headers = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", "1"),
        ("x-ratelimit-reset-requests", "20s"),
    ]
    state = RateLimitState()
    state.update(read_headers(headers, now=0.0, now_wall=WALL))
    assert state.pressed(1.0)  # 1 of 100 left: under the 2 % headroom
    assert not state.pressed(21.0)


def test_garbage_headers_ignored() -> None:
    assert read_headers([("anthropic-ratelimit-requests-remaining", "lots")], 0.0, WALL) == {}


@pytest.mark.parametrize(
    ("status", "passthrough", "retry", "kind"),
    [
        (400, False, False, None),
        (404, False, False, None),
        (413, False, False, None),
        (422, False, False, None),
        (401, False, True, FailureKind.AUTH),
        (403, False, True, FailureKind.AUTH),
        (401, True, False, None),
        (408, False, True, FailureKind.TIMEOUT),
        (409, False, True, FailureKind.SERVER),
        (429, False, True, FailureKind.RATE_LIMITED),
        (500, False, True, FailureKind.SERVER),
        (502, False, True, FailureKind.SERVER),
        (503, False, True, FailureKind.OVERLOADED),
        (529, False, True, FailureKind.OVERLOADED),
    ],
)
def test_classify_status(status: int, passthrough: bool, retry: bool, kind: FailureKind | None) -> None:
    v = classify_status(status, passthrough=passthrough)
    assert (v.retry, v.kind) == (retry, kind)


@pytest.mark.parametrize(
    ("error_type", "retry", "kind"),
    [
        ("overloaded_error", True, FailureKind.OVERLOADED),
        ("rate_limit_error", True, FailureKind.RATE_LIMITED),
        ("api_error", True, FailureKind.SERVER),
        ("invalid_request_error", False, None),
        ("authentication_error", True, FailureKind.AUTH),
        ("something_new", True, FailureKind.SERVER),
    ],
)
def test_classify_error_type(error_type: str, retry: bool, kind: FailureKind | None) -> None:
    v = classify_error_type(error_type, passthrough=False)
    assert (v.retry, v.kind) == (retry, kind)
