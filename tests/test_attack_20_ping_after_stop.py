"""Attack (found while testing issue 20's hand-off; older than it): a converted stream sends
``event: ping`` after ``message_stop``.

The OpenAI converter writes ``message_delta`` and ``message_stop`` once the upstream has said
it finished and what it used (``protocol/convert/stream.py``), before ``[DONE]`` and the end of
the upstream's body. ``Relay._ping_while_silent`` pings whenever no event was published for
``PING_INTERVAL_S``, committed or not: it does not know the message is over. An upstream slow
to send ``[DONE]`` (or to end its body) after the usage chunk gets the client a ping after
``message_stop``, and the flight's history (followers, the response cache) keeps it.
"""

from __future__ import annotations

import pytest
import trio

from trio_balancer.flight import relay
from trio_balancer.flight.hub import Hub, Item
from trio_balancer.protocol import events

from .fakes import OAI_USAGE, SSE_HEADERS, FakeUpstream, Pause, Reply, oai_chunk
from .helpers import PROVIDER_KEY, BalancerFactory


async def test_no_ping_after_message_stop(
    upstream: FakeUpstream, balancer_for: BalancerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "PING_INTERVAL_S", 0.01)
    tail = Pause()
    upstream.script(
        Reply(
            headers=SSE_HEADERS,
            steps=[
                oai_chunk({"role": "assistant", "content": ""}),
                oai_chunk({"content": "hello"}),
                oai_chunk({}, "stop"),
                oai_chunk(usage=OAI_USAGE),  # message_delta and message_stop go out here
                tail,  # the upstream takes its time over [DONE]
                b"data: [DONE]\n\n",
            ],
        )
    )
    config = {
        "providers": [
            {"name": "o", "kind": "openai", "base_url": upstream.url + "/v1", "api_key": PROVIDER_KEY}
        ]
    }
    b = await balancer_for(config=config)
    pinged_after_stop = trio.Event()
    keep = Hub._keep

    def watched_keep(hub: Hub, item: Item) -> None:
        """Set ``pinged_after_stop`` when the flight publishes a ping after message_stop."""
        before = b"".join(i for i in hub.history if type(i) is bytes)
        if item == events.PING and b"event: message_stop" in before:
            pinged_after_stop.set()
        keep(hub, item)

    monkeypatch.setattr(Hub, "_keep", watched_keep)

    body = {"model": "m", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with trio.open_nursery() as nursery:

        async def release_when_pinged_or_bound() -> None:
            await tail.wait_reached()
            # Bounded: with the bug a ping follows message_stop within a few intervals (10 ms);
            # without it the event is never set and the upstream is released after 2 s.
            with trio.move_on_after(2):
                await pinged_after_stop.wait()
            tail.release()

        nursery.start_soon(release_when_pinged_or_bound)
        async with b.client.stream("POST", "/v1/messages", json=body) as r:
            got = await r.aread()
    assert r.status_code == 200
    after_stop = got.split(b"event: message_stop", 1)[1]
    assert b"event:" not in after_stop, after_stop  # nothing follows message_stop
