"""The hand-off (``ByteQueue.hand_off_to``): one client of one stream gets each chunk in the
flight's own task, with no wake-up of its writer, and loses nothing of what the queue promised:
order, backpressure, the end, a consumer that leaves, a send that fails."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import trio
import trio.testing

from trio_balancer.app.writer import CLIENT_LEFT, DELIVERED, SLOW_CLIENT_S, Delivery, ResponseWriter
from trio_balancer.flight.byte_queue import ByteQueue
from trio_balancer.flight.hub import Head, Hub, SharePolicy, new_listener

SSE = [(b"content-type", b"text/event-stream")]


async def test_items_go_to_a_waiting_consumer_in_the_producers_task() -> None:
    queue: ByteQueue[bytes] = ByteQueue(10, len)
    handed: list[tuple[bytes, object]] = []

    async def take(item: bytes) -> bool:
        handed.append((item, trio.lowlevel.current_task()))
        return item != b"queue me"

    queue.hand_off_to(take)
    got: list[bytes] = []

    async def consumer() -> None:
        got.extend([item async for item in queue])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        await queue.send(b"a", hand_off=True)
        await queue.send(b"b", hand_off=True)
        await queue.send(b"queue me", hand_off=True)  # declined: queued, and the consumer takes it itself
        await trio.testing.wait_all_tasks_blocked()
        await queue.send(b"c", hand_off=True)
        queue.close()
    me = trio.lowlevel.current_task()
    assert [item for item, _ in handed] == [b"a", b"b", b"queue me", b"c"]
    assert all(task is me for _, task in handed)
    assert got == [b"queue me"]


def recording_queue() -> tuple[ByteQueue[bytes], list[bytes]]:
    """A queue whose hand-off takes every item, and the list of what it took."""
    queue: ByteQueue[bytes] = ByteQueue(1000, len)
    handed: list[bytes] = []

    async def take(item: bytes) -> bool:
        handed.append(item)
        return True

    queue.hand_off_to(take)
    return queue, handed


async def test_no_hand_off_while_the_consumer_holds_an_item_or_items_wait() -> None:
    """Only a consumer parked in receive() with nothing queued is handed to: never two sends
    at once, never an item overtaking one still queued."""
    queue, handed = recording_queue()
    await queue.send(b"first", hand_off=True)  # no consumer waiting: queued
    assert handed == [] and len(queue) == 1
    assert await queue.receive() == b"first"  # the consumer holds it, not parked
    await queue.send(b"second", hand_off=True)
    assert handed == [] and await queue.receive() == b"second"


async def test_other_producers_queue_behind_a_hand_off_in_progress() -> None:
    """A second producer (a converted stream's pings) queues while a hand-off runs, and the
    consumer takes it only once the hand-off is over: in the order the items came."""
    queue: ByteQueue[bytes] = ByteQueue(1000, len)
    order: list[bytes] = []
    release = trio.Event()

    async def take(item: bytes) -> bool:
        if item == b"slow":
            await release.wait()
        order.append(item)
        return True

    queue.hand_off_to(take)

    async def consumer() -> None:
        order.extend([item async for item in queue])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(partial(queue.send, b"slow", hand_off=True))
        await trio.testing.wait_all_tasks_blocked()
        await queue.send(b"ping", hand_off=True)  # queued at once, not handed, not taken yet
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and len(queue) == 1
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        queue.close()
    assert order == [b"slow", b"ping"]


async def test_a_consumer_that_left_during_a_hand_off_breaks_the_next_send() -> None:
    queue: ByteQueue[bytes] = ByteQueue(1000, len)

    async def take(item: bytes) -> bool:
        queue.abandon()
        return True

    queue.hand_off_to(take)

    async def consumer() -> None:
        with contextlib.suppress(trio.ClosedResourceError):  # it left
            await queue.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        await queue.send(b"a", hand_off=True)
        nursery.cancel_scope.cancel()
    try:
        await queue.send(b"b")
    except trio.BrokenResourceError:
        pass
    else:
        raise AssertionError("a send after the consumer left must fail")


class FakeClient:
    """An ASGI client side: what the writer sent and from which task, a disconnect when told,
    and a send that fails (``fail_on``) or takes ``slow_s`` of the (mock) clock."""

    def __init__(self, fail_on: bytes | None = None, slow_s: float = 0.0) -> None:
        self.sent: list[dict[str, object]] = []
        self.tasks: list[object] = []
        self.fail_on = fail_on
        self.slow_s = slow_s
        self.leave = trio.Event()
        self.sending = 0
        self.most_at_once = 0

    async def send(self, message: dict[str, object]) -> None:
        if self.fail_on is not None and message.get("body") == self.fail_on:
            raise RuntimeError("the server's send failed")
        self.sending += 1
        self.most_at_once = max(self.most_at_once, self.sending)
        try:
            if self.slow_s and message.get("body") and message.get("more_body"):
                await trio.sleep(self.slow_s)  # body chunks only: the head and the end are quick
            self.sent.append(message)
            self.tasks.append(trio.lowlevel.current_task())
        finally:
            self.sending -= 1

    async def receive(self) -> dict[str, object]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent)  # type: ignore[misc]


class Drained:
    """A hub with one listener drained by a ResponseWriter into ``client``, in ``nursery``."""

    def __init__(
        self, nursery: trio.Nursery, client: FakeClient, deserted: Callable[[], None] = lambda: None
    ) -> None:
        self.client = client
        self.hub = Hub(SharePolicy(), deserted)
        self.listener = self.hub.subscribe()
        self.writer = ResponseWriter(client.receive, client.send, [])
        self.delivery: Delivery | None = None
        self.raised: list[BaseException] = []
        nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            self.delivery = await self.writer.drain(self.listener, True)
        except RuntimeError as exc:
            self.raised.append(exc)
        finally:
            self.hub.unsubscribe(self.listener)

    async def start(self) -> None:
        await self.hub.publish(Head(200, SSE))
        await trio.testing.wait_all_tasks_blocked()


async def test_the_writer_sends_chunks_in_the_flights_task_and_ends_in_its_own() -> None:
    client = FakeClient()
    async with trio.open_nursery() as nursery:
        d = Drained(nursery, client)
        await d.start()
        for i in range(5):
            await d.hub.publish(f"data: {i}\n\n".encode())
        d.hub.close()
        await trio.testing.wait_all_tasks_blocked()
        client.leave.set()
    assert d.delivery is not None and d.delivery.outcome == DELIVERED and d.delivery.status == 200
    assert client.body == b"".join(f"data: {i}\n\n".encode() for i in range(5))
    me = trio.lowlevel.current_task()
    body_tasks = client.tasks[1:-1]
    assert len(body_tasks) == 5 and all(task is me for task in body_tasks)  # handed off
    assert client.tasks[-1] is not me  # the end is the writer's own


async def test_a_send_failing_in_the_flights_task_fails_the_writer_not_the_flight() -> None:
    client = FakeClient(fail_on=b"data: boom\n\n")
    deserted = trio.Event()
    async with trio.open_nursery() as nursery:
        d = Drained(nursery, client, deserted.set)
        await d.start()
        await d.hub.publish(b"data: ok\n\n")
        await d.hub.publish(b"data: boom\n\n")  # fails in this task: the flight goes on
        await trio.testing.wait_all_tasks_blocked()
        await d.hub.publish(b"data: after\n\n")  # nobody listens any more: dropped quietly
    assert [str(e) for e in d.raised] == ["the server's send failed"]  # raised in the writer's task
    assert deserted.is_set() and d.hub.listeners == 0
    assert b"after" not in client.body


async def test_a_client_leaving_mid_stream_is_client_left() -> None:
    client = FakeClient()
    async with trio.open_nursery() as nursery:
        d = Drained(nursery, client)
        await d.start()
        await d.hub.publish(b"data: 1\n\n")
        client.leave.set()
        await trio.testing.wait_all_tasks_blocked()
        await d.hub.publish(b"data: 2\n\n")  # the listener left: nothing is sent
    assert d.delivery is not None and d.delivery.outcome == CLIENT_LEFT
    assert b"data: 2" not in client.body


async def test_a_slow_client_is_fed_from_the_queue_after_one_slow_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that takes over SLOW_CLIENT_S for a handed chunk keeps the flight in a write
    nothing can cancel; from then on its chunks are queued, and the flight waits in a send
    its deadlines can end."""
    client = FakeClient(slow_s=SLOW_CLIENT_S * 2)
    async with trio.open_nursery() as nursery:
        d = Drained(nursery, client)
        await d.start()
        await d.hub.publish(b"data: 1\n\n")  # handed off: slow
        await d.hub.publish(b"data: 2\n\n")  # queued: this task returns at once
        with trio.move_on_after(SLOW_CLIENT_S / 10) as waiting:
            await d.hub.publish(b"data: 3\n\n")
        assert not waiting.cancelled_caught
        d.hub.close()
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(10 * SLOW_CLIENT_S)  # the mock clock's time: the writer's queue drains
        client.leave.set()
    me = trio.lowlevel.current_task()
    assert client.tasks[1] is me and all(t is not me for t in client.tasks[2:])
    assert client.body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"


async def test_nothing_reaches_the_client_beside_a_hand_off_in_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While a handed chunk is being written, a second listener's arrival (the hub's
    send_nowait path) or another producer queues; the writer takes it only once the hand-off
    is over: never two sends at once, never out of order."""
    client = FakeClient(slow_s=0.01)
    async with trio.open_nursery() as nursery:
        d = Drained(nursery, client)
        await d.start()
        nursery.start_soon(d.hub.publish, b"data: 1\n\n")  # handed off, writing for 10 ms
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)
        d.listener.send_nowait(b"data: 2\n\n", force=True)
        d.listener.send_nowait(b"data: 3\n\n", force=True)
        await trio.sleep(1)
        d.hub.close()
        await trio.sleep(1)
        client.leave.set()
    assert client.most_at_once == 1
    assert client.body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"


async def test_only_the_one_listener_path_hands_off() -> None:
    """``send`` without ``hand_off`` (a shared flight waiting for a slow listener) queues."""
    queue, handed = recording_queue()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.receive)
        await trio.testing.wait_all_tasks_blocked()
        await queue.send(b"a")
    assert handed == []


def test_a_new_listener_has_no_hand_off() -> None:
    assert new_listener()._hand_off is None  # set only by a writer that has the head
