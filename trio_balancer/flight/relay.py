"""Relaying one provider's 200 response to the flight's listeners, event by event.

A stream is decoded incrementally (sans-I/O, inline: a second task and channel hop per event
would cost more than the decoding itself; SSE, or AWS's event stream for Bedrock), converted
from the provider kind's format when it is not Anthropic's (``protocol/answers.py`` says, per
kind, which decoder and converters apply), and fed to
the :class:`~trio_balancer.protocol.commit.CommitGate`, which decides what is published and
when. A JSON answer is held until complete, so a cut or an error inside a 200 can still fail
over. Either way the relay also reads the response's usage as it passes, and remembers the
family of every thinking signature in it (``protocol/thinking.py``): only events whose bytes
hold ``signature`` or ``redacted_thinking`` are looked at, so other events cost two substring
searches. Thinking converted from an OpenAI-style ``reasoning_content`` is signed by the
balancer, and remembered the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from trio_balancer.config import ProviderConfig, ServerConfig
from trio_balancer.errors import error_body
from trio_balancer.flight.attempt import UpstreamResponse
from trio_balancer.flight.failures import AttemptFailed, broken, provider_error, unavailable
from trio_balancer.flight.hub import Head, Item
from trio_balancer.logging import get_logger
from trio_balancer.policy.failover import classify_error_type
from trio_balancer.policy.health import FailureKind
from trio_balancer.protocol import events as anthropic
from trio_balancer.protocol.answers import EventConverter, answer_format
from trio_balancer.protocol.commit import CommitGate, Ending, ErrorBeforeCommit
from trio_balancer.protocol.convert import ConversionError, UpstreamStreamError
from trio_balancer.protocol.model_name import message_start_with_model, message_with_model
from trio_balancer.protocol.sse import EventTooLarge, MalformedEventData, SSEEvent
from trio_balancer.protocol.thinking import SignatureBook, remember_event, remember_message
from trio_balancer.protocol.upstream_errors import (
    error_type_of,
    parse_error_event,
    scrub_error_body,
    scrub_error_event,
)
from trio_balancer.protocol.usage import UsageTracker
from trio_balancer.redaction import scrub

__all__ = ["MAX_HELD_JSON", "PING_INTERVAL_S", "Outlet", "Relay", "RelayLimits"]

log = get_logger("trio_balancer.flight.relay")

# A JSON (non-stream) answer is held until complete so a cut body can still fail over. Past
# this size we commit and stream the rest: no real message is that large.
MAX_HELD_JSON = 32 * 1024 * 1024
# A converted stream silent this long gets a ping, as Anthropic's own streams do, so that
# clients and proxies in between do not take the silence for a dead connection.
PING_INTERVAL_S = 10.0


class Outlet(Protocol):
    """Where the relay puts what the client gets: the flight (which owns the commit)."""

    @property
    def committed(self) -> bool: ...
    async def commit(self, head: Head, first: bytes | None, *, held_events: int = 0) -> None: ...
    async def publish(self, item: Item) -> None: ...


def _server_default(name: str) -> Any:
    return attrs.fields_dict(ServerConfig)[name].default


@attrs.frozen
class RelayLimits:
    """How much a provider may send: ``[server] max_upstream_response_bytes`` and
    ``max_upstream_event_bytes`` (their defaults are the config's)."""

    max_response_bytes: int = _server_default("max_upstream_response_bytes")
    max_event_bytes: int = _server_default("max_upstream_event_bytes")

    @classmethod
    def for_server(cls, server: ServerConfig) -> RelayLimits:
        return cls(server.max_upstream_response_bytes, server.max_upstream_event_bytes)


class Relay:
    """One attempt's 200 response, from the provider to the outlet.

    ``secrets`` are the credentials the request carried upstream: no relayed error text may
    contain them. ``forward`` is told how long each published chunk took from the socket to
    the listeners (the balancer's own latency, for metrics). ``thinking`` is the book where the
    response's thinking signatures are remembered as the provider's family's. ``client_model``,
    when set, is the model name the client asked for, put back into a passthrough answer in
    place of the provider's (the target renamed the model): ``protocol/model_name.py``;
    ``converted_model`` names a converted answer; a ``counting`` relay's JSON is left as sent.
    """

    def __init__(
        self,
        provider: ProviderConfig,
        payload: Mapping[str, Any],
        outlet: Outlet,
        secrets: Sequence[str],
        *,
        limits: RelayLimits,
        forward: Callable[[float], None],
        trace: bool = False,
        thinking: SignatureBook | None = None,
        client_model: str | None = None,
        converted_model: str | None = None,
        counting: bool = False,
    ) -> None:
        self.provider = provider
        self._counting = counting
        self._outlet, self._secrets = outlet, secrets
        self._limits, self._forward, self._trace = limits, forward, trace
        self._book = thinking
        self._family = provider.capabilities.thinking_family
        self._answers = answer_format(provider.kind)
        # Converted answers are written with the model the client is shown: its own, or with
        # show_upstream_model the provider's (``converted_model``).
        self._rename = client_model if not self._answers.converted else None
        self._converted_model = converted_model or str(payload.get("model"))
        self.tracker = UsageTracker()
        self.usage_reported: bool | None = None  # converted answers: did the upstream send usage
        self.events = 0  # SSE events published by this relay (none for a JSON answer)
        self.bytes = 0  # body bytes published by this relay
        self.completed = False
        self._message_stopped = False

    async def run(self, response: UpstreamResponse) -> None:
        head = Head(200, response.headers)
        if not response.sse:
            await self._relay_json(head, response)
        elif self._answers.converter is None:
            await self._relay_sse(head, response, None)
        else:
            await self._relay_converted(head, response, self._answers.converter(self._converted_model))

    # -- SSE ---------------------------------------------------------------------------------

    async def _relay_converted(
        self, head: Head, response: UpstreamResponse, converter: EventConverter
    ) -> None:
        """A converted stream has no upstream pings to forward; we send our own during long
        silences (reasoning models can think for minutes without a delta)."""
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping_while_silent)
            try:
                await self._relay_sse(head, response, converter)
            except Exception as exc:  # re-raised below, not wrapped in a group
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        self.usage_reported = converter.usage_reported

    async def _ping_while_silent(self) -> None:
        seen = -1
        while True:
            await trio.sleep(PING_INTERVAL_S)
            if self._outlet.committed and self.events == seen and not self._message_stopped:
                await self._outlet.publish(anthropic.PING)
            seen = self.events

    async def _relay_sse(
        self, head: Head, response: UpstreamResponse, converter: EventConverter | None
    ) -> None:
        name = self.provider.name
        decoder = self._answers.decoder(self._limits.max_event_bytes)
        gate = CommitGate(self._relayable_error, check_shape=converter is None)
        limit = self._limits.max_response_bytes
        received_bytes = 0
        try:
            async for chunk in response.chunks:
                received = time.perf_counter()
                received_bytes += len(chunk)
                if received_bytes > limit:
                    raise broken(name, f"response larger than {limit} bytes, cut off")
                response.idle.touch()
                decoded = decoder.feed(chunk)
                if decoded and converter is not None:
                    decoded = self._convert(converter, decoded)
                elif decoded and self._rename is not None:
                    decoded = self._client_named(decoded)
                if decoded and await self._take(head, gate, decoded):
                    self._forwarded(received, len(decoded))
                    response.idle.touch()  # time the client took is not the provider's idleness
            tail = decoder.close()
        except (EventTooLarge, ConversionError) as exc:  # too large, or framing that cannot be read
            raise broken(name, str(exc)) from None
        if converter is not None:
            last = self._convert(converter, [tail] if tail else [], closing=True)
        elif tail is not None:
            # The provider ended without a blank line after its last event. Most SSE clients
            # drop such an event, so we end it for them: the one change we make to the bytes.
            end = b"\n" if tail.raw.endswith((b"\n", b"\r")) else b"\n\n"
            last = [attrs.evolve(tail, raw=tail.raw + end)]
        else:
            last = []
        if last:
            await self._take(head, gate, last)
        self._judge(gate)

    def _client_named(self, decoded: list[SSEEvent]) -> list[SSEEvent]:
        """The events with the client's model in ``message_start``; looked for until found."""
        assert self._rename is not None
        for i, event in enumerate(decoded):
            if event.event == "message_start" or (event.event is None and event.data is not None):
                renamed = message_start_with_model(event, self._rename)
                if renamed is not event or event.event == "message_start":
                    self._rename = None  # one message per stream
                    return [*decoded[:i], renamed, *decoded[i + 1 :]]
        return decoded

    def _forwarded(self, received: float, count: int) -> None:
        handed = time.perf_counter()
        self._forward(handed - received)
        if self._trace:
            log.debug(
                "stream.chunk",
                events=count,
                received=received,
                handed=handed,
                forward_us=round((handed - received) * 1e6, 1),
            )

    async def _take(self, head: Head, gate: CommitGate, decoded: list[SSEEvent]) -> bool:
        """Feed events through the gate and publish what it lets out; True if it did."""
        observe, book = self.tracker.observe, self._book
        for event in decoded:
            observe(event)
            if book is not None and (b"signature" in event.raw or b"redacted_thinking" in event.raw):
                self._remember(book, event)
        committed = gate.committed
        try:
            out = gate.feed(decoded)
        except ErrorBeforeCommit as exc:
            raise self._error_before_commit(exc.event) from None
        if gate.malformed:
            for problem in gate.take_malformed():
                log.warning("upstream.malformed_event", provider=self.provider.name, problem=problem)
        if out is None:
            return False
        self.events, self.bytes = gate.published_events, gate.published_bytes
        self._message_stopped = gate.saw_stop  # no ping after message_stop (the upstream may linger)
        if committed:
            await self._outlet.publish(out)
        else:
            await self._outlet.commit(head, out, held_events=gate.held_events)
        return True

    def _remember(self, book: SignatureBook, event: SSEEvent) -> None:
        try:
            data = event.json()
        except MalformedEventData:
            return  # the gate has its say on malformed events
        if isinstance(data, dict):
            remember_event(book, data, self._family)

    def _judge(self, gate: CommitGate) -> None:
        """After the body: a whole stream completes; anything else fails this attempt."""
        ending = gate.ending()
        name = self.provider.name
        if ending is Ending.NO_CONTENT:
            raise unavailable(name, "stream ended before any content")
        if ending is Ending.ERROR:
            assert gate.error_after_commit is not None
            raise self._error_after_commit(gate.error_after_commit)
        if ending is Ending.NO_STOP:
            raise unavailable(name, "stream ended before message_stop")
        self.completed = True

    def _convert(
        self, converter: EventConverter, decoded: list[SSEEvent], *, closing: bool = False
    ) -> list[SSEEvent]:
        name = self.provider.name
        try:
            out: list[SSEEvent] = []
            for event in decoded:
                out.extend(converter.feed(event))
            if closing:
                out.extend(converter.close())
            return out
        except UpstreamStreamError as exc:
            message = f"provider {name!r}: {exc.error_type} in stream: {scrub(str(exc), self._secrets)}"
            raise provider_error(self.provider, exc.error_type, message) from None
        except ConversionError as exc:
            raise broken(name, str(exc)) from None

    def _error_before_commit(self, event: SSEEvent) -> AttemptFailed:
        error_type, message = parse_error_event(event)
        body = (
            scrub_error_body(event.data, self._secrets)
            if event.data is not None and error_type_of(event.data) is not None
            else None
        )
        clean = scrub(message, self._secrets)
        text = f"provider {self.provider.name!r}: {error_type} in stream: {clean}"
        if body is None:
            body = error_body(error_type, clean)
        return provider_error(self.provider, error_type, text, body)

    def _error_after_commit(self, event: SSEEvent) -> AttemptFailed:
        """The provider's own error event reached the client; remember it for health."""
        error_type, message = parse_error_event(event)
        text = f"provider {self.provider.name!r}: {error_type} in stream: {scrub(message, self._secrets)}"
        return provider_error(self.provider, error_type, text, sent_to_client=True)

    def _relayable_error(self, event: SSEEvent) -> SSEEvent:
        """A provider's error event as the client may see it: scrubbed, and never an auth
        error of the balancer's own key (that is a provider failure to the client)."""
        error_type, _ = parse_error_event(event)
        if classify_error_type(error_type, passthrough=self.provider.passthrough).kind is FailureKind.AUTH:
            text = f"provider {self.provider.name!r} rejected the balancer's credentials mid-stream"
            return anthropic.error_sse_event(error_body("api_error", text))
        return scrub_error_event(event, self._secrets)

    # -- JSON --------------------------------------------------------------------------------

    async def _relay_json(self, head: Head, response: UpstreamResponse) -> None:
        limit = self._limits.max_response_bytes
        converted = self._answers.message is not None and not self._counting
        held = bytearray()
        received = 0
        async for chunk in response.chunks:
            response.idle.touch(now=True)  # JSON bodies come in few chunks
            received += len(chunk)
            if received > limit:
                raise broken(self.provider.name, f"response larger than {limit} bytes, cut off")
            if self._outlet.committed:
                await self._published(chunk)
                continue
            held += chunk
            if len(held) > MAX_HELD_JSON and not converted:
                await self._committed(head, bytes(held))
        if not self._outlet.committed:
            body = (
                self._converted_json(bytes(held))
                if converted
                else _checked_json(self.provider, bytes(held), self._secrets, counting=self._counting)
            )
            if self._rename is not None:
                body = message_with_model(body, self._rename)
            message = _message(body)
            if message is not None:
                self.tracker.observe_message(message)  # the usage it reports, cache tokens included
                if self._book is not None and (b"signature" in body or b"redacted_thinking" in body):
                    remember_message(self._book, message, self._family)
            await self._committed(head, body)
        self.completed = True

    async def _committed(self, head: Head, body: bytes) -> None:
        self.bytes = len(body)  # a JSON answer has no events
        await self._outlet.commit(head, body)

    async def _published(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        await self._outlet.publish(chunk)

    def _converted_json(self, body: bytes) -> bytes:
        """A converted kind's JSON answer as an Anthropic message; an error object is that error."""
        name = self.provider.name
        assert self._answers.message is not None
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise broken(name, f"unusable answer: {str(exc)[:200]}") from None
        try:
            message_obj = self._answers.message(parsed, self._converted_model)
        except UpstreamStreamError as exc:
            clean = scrub(str(exc), self._secrets)
            message = f"provider {name!r}: {exc.error_type} in a 200 answer"
            raise provider_error(
                self.provider, exc.error_type, message, error_body(exc.error_type, clean)
            ) from None
        except ConversionError as exc:
            raise broken(name, f"unusable answer: {str(exc)[:200]}") from None
        usage = message_obj["usage"]
        self.usage_reported = bool(usage["input_tokens"] or usage["output_tokens"])
        return anthropic.dumps(message_obj).encode()


def _checked_json(provider: ProviderConfig, body: bytes, secrets: Sequence[str], *, counting: bool) -> bytes:
    """A 200 JSON answer of a kind not converted, as it is; an error object in it is that
    error, with its real status; a body that is no JSON object (a proxy's HTML page) is no
    answer and fails over. A count's answer is the count flight's to read."""
    found = answer_format(provider.kind).error_in_200(body, provider.name)
    if found is None:
        if not counting and _message(body) is None:
            raise broken(
                provider.name, f"unusable answer: a 200 of {len(body)} bytes that is not a JSON object"
            )
        return body
    error_type, error = found
    message = f"provider {provider.name!r}: {error_type} in a 200 answer"
    raise provider_error(provider, error_type, message, scrub_error_body(error, secrets))


def _message(body: bytes) -> dict[str, Any] | None:
    """A JSON answer as a message, or None when it is not one."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None
