"""Sans-I/O usage extraction from a response, and estimates for what the provider left out.

Only the events that carry usage are parsed (``message_start``, ``message_delta``), so the
stream's hot path pays a string comparison per event and nothing more. Values are taken, never
added: ``message_delta`` usage is cumulative in Anthropic's protocol, and a field that appears
twice keeps its most complete (largest) value, so nothing is counted twice.

When a provider sends no usage at all (the failure in shared/reference/000: every such request
recorded 0 tokens and $0), or only some of it, the missing counts are estimated (input from the
request, output from the text actually streamed) and the result says so: ``reported``,
``partial`` or ``estimated``. A silent zero is never produced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from trio_balancer.protocol.sse import MalformedEventData, SSEEvent
from trio_balancer.protocol.tokens import estimate_request, estimate_text

__all__ = ["ESTIMATED", "PARTIAL", "REPORTED", "Usage", "UsageTracker"]

REPORTED = "reported"
PARTIAL = "partial"
ESTIMATED = "estimated"

# A count above this is a lying upstream, not a real answer (the largest context windows are
# a few million tokens); it is kept at the bound so totals and the ledger stay meaningful.
MAX_TOKENS_REPORTED = 10**12

_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The cache writes split by lifetime, when the provider says (they are priced differently).
    cache_creation_5m: int | None = None
    cache_creation_1h: int | None = None
    source: str = REPORTED

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


class UsageTracker:
    """Feed it the events of one response (or the whole JSON message); ask for ``result()``."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._ttl: dict[str, int] = {}
        # Output text, collected only when message_start came without usage: then the provider
        # is one that omits it, and the estimate needs the text (parsed per delta, cost known).
        self._collect = False
        self._text: list[str] = []
        # Cheap fallback for the rarer case of usage in message_start but none at the end.
        self._delta_bytes = 0
        self._delta_events = 0

    def observe(self, event: SSEEvent) -> None:
        kind = event.event
        if kind == "content_block_delta":
            data = event.data
            if data is None:
                return
            if self._collect:
                self._collect_text(event)
            else:
                self._delta_bytes += len(data)
                self._delta_events += 1
        elif kind == "message_start":
            message = _json(event).get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict) and usage:
                # output_tokens here is a placeholder (Anthropic sends 1); only the end counts.
                self._take(usage, final=False)
            else:
                self._collect = True
        elif kind == "message_delta":
            usage = _json(event).get("usage")
            if isinstance(usage, dict):
                self._take(usage, final=True)

    def observe_message(self, message: Mapping[str, Any]) -> None:
        """A whole (non-stream) Anthropic message."""
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._take(usage, final=True)
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict):
                for key in ("text", "thinking"):
                    if isinstance(block.get(key), str):
                        self._text.append(block[key])
                if block.get("type") == "tool_use":
                    self._text.append(json.dumps(block.get("input", {}), ensure_ascii=False))

    def _take(self, usage: Mapping[str, Any], *, final: bool) -> None:
        for name in _FIELDS:
            if name == "output_tokens" and not final:
                continue
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._seen[name] = max(min(value, MAX_TOKENS_REPORTED), self._seen.get(name, 0))
        cache = usage.get("cache_creation")
        if isinstance(cache, dict):
            for name in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"):
                value = cache.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self._ttl[name] = max(min(value, MAX_TOKENS_REPORTED), self._ttl.get(name, 0))

    def _collect_text(self, event: SSEEvent) -> None:
        try:
            delta = event.json().get("delta")
        except (MalformedEventData, AttributeError):
            return
        if not isinstance(delta, dict):
            return  # an upstream that lies about its shapes: its text is not countable here
        for key in ("text", "thinking", "partial_json"):
            value = delta.get(key)
            if isinstance(value, str):
                self._text.append(value)

    @property
    def reported_anything(self) -> bool:
        return bool(self._seen)

    def result(self, request: Mapping[str, Any] | None, *, trust_output: bool = True) -> Usage:
        """The usage of the response; ``request`` (the client's body) is used for estimates.

        ``trust_output=False``: the output count seen is itself an estimate (a converted
        stream whose upstream reported nothing), so the record must not say ``reported``.
        """
        seen = self._seen
        estimated: list[str] = []
        input_tokens = seen.get("input_tokens")
        cached = seen.get("cache_read_input_tokens", 0) + seen.get("cache_creation_input_tokens", 0)
        if input_tokens is None or (input_tokens == 0 and not cached):
            input_tokens = estimate_request(request or {})
            estimated.append("input")
        output_tokens = seen.get("output_tokens")
        if output_tokens is None or (output_tokens == 0 and self._has_output()):
            output_tokens = self._estimate_output()  # a reported zero with text streamed is no count
            estimated.append("output")
        elif not trust_output:
            estimated.append("output")
        if not estimated:
            source = REPORTED
        elif len(estimated) == 2:
            source = ESTIMATED
        else:
            source = PARTIAL
        return Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_creation_input_tokens=seen.get("cache_creation_input_tokens", 0),
            cache_read_input_tokens=seen.get("cache_read_input_tokens", 0),
            cache_creation_5m=self._ttl.get("ephemeral_5m_input_tokens"),
            cache_creation_1h=self._ttl.get("ephemeral_1h_input_tokens"),
            source=source,
        )

    def _has_output(self) -> bool:
        return bool(self._text) or self._delta_events > 0

    def _estimate_output(self) -> int:
        if self._text:
            return estimate_text("".join(self._text))
        # ~70 bytes of JSON envelope per delta event; 4 bytes a token for what remains.
        return max(0, round((self._delta_bytes - 70 * self._delta_events) / 4))


def _json(event: SSEEvent) -> dict[str, Any]:
    try:
        parsed = event.json()
    except MalformedEventData:
        return {}
    return parsed if isinstance(parsed, dict) else {}
