"""Attack on issue 20's hand-off: a ping that waits for a hand-off in progress is overtaken.

A converted stream has two producers into one flight: the relay and the ping task
(``relay._ping_while_silent``). With one listener the hub hands each chunk off to the
client in the producer's task; a second producer's send waits while a hand-off runs
(``ByteQueue.send``: ``_handing_off``). But the ping was already put in the hub's history
(``Hub.publish`` keeps an item before sending it), and if a dedup follower joins while the
leader's hand-off is mid-write, the relay's next item goes through the several-listener path
(``send_nowait``) *ahead of* the ping still waiting in the one-listener path. The leader then
gets the events in another order than the history (what followers and the cache replay),
and when the relay's next item is the last one the leader is sent ``event: ping`` after
``message_stop``. Before the hand-off a ping's send never waited here (the queue had room).
"""

from __future__ import annotations

import trio
import trio.testing

from trio_balancer.app.writer import DELIVERED, ResponseWriter
from trio_balancer.flight.hub import Head, Hub, SharePolicy
from trio_balancer.protocol import events

SSE = [(b"content-type", b"text/event-stream")]
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
SLOW = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"slow"}}\n\n'
STOP = events.encode(events.message_stop())


class Client:
    """An ASGI client side whose write of ``SLOW`` waits until ``take`` is set."""

    def __init__(self, hold: bytes | None = None) -> None:
        self.body: list[bytes] = []
        self.hold = hold
        self.holding = trio.Event()
        self.take = trio.Event()

    async def send(self, message: dict[str, object]) -> None:
        if self.hold is not None and message.get("body") == self.hold:
            self.holding.set()
            await self.take.wait()  # the client is slow to take this chunk
        if message["type"] == "http.response.body" and message.get("body"):
            self.body.append(message["body"])  # type: ignore[arg-type]

    async def receive(self) -> dict[str, object]:
        await trio.sleep_forever()
        raise AssertionError


async def test_a_ping_waiting_for_a_hand_off_is_not_sent_after_message_stop() -> None:
    hub = Hub(SharePolicy(keep_history=True), lambda: None)  # a flight others may join
    leader_client, follower_client = Client(hold=SLOW), Client()
    leader_writer = ResponseWriter(leader_client.receive, leader_client.send, [])
    follower_writer = ResponseWriter(follower_client.receive, follower_client.send, [])
    deliveries: dict[str, object] = {}

    async def drain(name: str, writer: ResponseWriter, listener: object) -> None:
        deliveries[name] = await writer.drain(listener, True)  # type: ignore[arg-type]

    async def relay() -> None:
        await hub.publish(SLOW)  # handed off to the leader: its client is slow to take it
        await hub.publish(STOP)  # the relay's next (and last) item, at once

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, "leader", leader_writer, hub.subscribe())
            await hub.publish(Head(200, SSE))
            await trio.testing.wait_all_tasks_blocked()
            await hub.publish(DELTA)
            nursery.start_soon(relay)
            await leader_client.holding.wait()  # the hand-off is mid-write
            nursery.start_soon(hub.publish, events.PING)  # the ping task: waits for the hand-off
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(drain, "follower", follower_writer, hub.subscribe())  # dedup follower
            await trio.testing.wait_all_tasks_blocked()
            leader_client.take.set()
            await trio.testing.wait_all_tasks_blocked()
            hub.close()
    assert deliveries["leader"].outcome == DELIVERED  # type: ignore[attr-defined]
    history = [item for item in hub.history if type(item) is bytes]
    assert history == [DELTA, SLOW, events.PING, STOP]
    assert follower_client.body == history  # the follower (and the cache) get the history's order
    # The leader must too; it gets [DELTA, SLOW, STOP, PING]: a ping after message_stop.
    assert leader_client.body == history
