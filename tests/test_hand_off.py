"""The hand-off (``ByteQueue.hand_off_to``): one client of one stream gets each chunk in the
flight's own task, with no wake-up of its writer, and loses nothing of what the queue promised:
order, backpressure, the end, a consumer that leaves, a send that fails."""

from __future__ import annotations

import contextlib

import trio
import trio.testing

from trio_balancer.app.writer import CLIENT_LEFT, DELIVERED, ResponseWriter
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
        await queue.send(b"a")
        await queue.send(b"b")
        await queue.send(b"queue me")  # declined: queued, and the consumer takes it itself
        await trio.testing.wait_all_tasks_blocked()
        await queue.send(b"c")
        queue.close()
    me = trio.lowlevel.current_task()
    assert [item for item, _ in handed] == [b"a", b"b", b"queue me", b"c"]
    assert all(task is me for _, task in handed)
    assert got == [b"queue me"]


async def test_no_hand_off_while_the_consumer_holds_an_item_or_items_wait() -> None:
    """Only a consumer parked in receive() with nothing queued is handed to: never two sends
    at once, never an item overtaking one still queued."""
    queue: ByteQueue[bytes] = ByteQueue(1000, len)
    handed: list[bytes] = []

    async def take(item: bytes) -> bool:
        handed.append(item)
        return True

    queue.hand_off_to(take)
    await queue.send(b"first")  # no consumer waiting: queued
    assert handed == [] and len(queue) == 1
    assert await queue.receive() == b"first"  # the consumer holds it, not parked
    await queue.send(b"second")
    assert handed == [] and await queue.receive() == b"second"


async def test_other_producers_wait_for_a_hand_off_in_progress() -> None:
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
        nursery.start_soon(queue.send, b"slow")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queue.send, b"ping")  # a second producer (a converted stream's pings)
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and len(queue) == 0  # it waits: neither queued nor handed
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
        await queue.send(b"a")
        nursery.cancel_scope.cancel()
    try:
        await queue.send(b"b")
    except trio.BrokenResourceError:
        pass
    else:
        raise AssertionError("a send after the consumer left must fail")


class FakeClient:
    """An ASGI client side: what the writer sent, and a disconnect when told."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.sent: list[dict[str, object]] = []
        self.tasks: list[object] = []
        self.fail_on = fail_on
        self.leave = trio.Event()

    async def send(self, message: dict[str, object]) -> None:
        if self.fail_on is not None and message.get("body") == self.fail_on:
            raise RuntimeError("the server's send failed")
        self.sent.append(message)
        self.tasks.append(trio.lowlevel.current_task())

    async def receive(self) -> dict[str, object]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent)  # type: ignore[misc]


async def test_the_writer_sends_chunks_in_the_flights_task_and_ends_in_its_own() -> None:
    client = FakeClient()
    writer = ResponseWriter(client.receive, client.send, [])
    hub = Hub(SharePolicy(), lambda: None)
    listener = hub.subscribe()
    delivery = None

    async def drain() -> None:
        nonlocal delivery
        delivery = await writer.drain(listener, True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await hub.publish(Head(200, SSE))
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            await hub.publish(f"data: {i}\n\n".encode())
        hub.close()
        await trio.testing.wait_all_tasks_blocked()
        client.leave.set()
    assert delivery is not None and delivery.outcome == DELIVERED and delivery.status == 200
    assert client.body == b"".join(f"data: {i}\n\n".encode() for i in range(5))
    me = trio.lowlevel.current_task()
    body_tasks = client.tasks[1:-1]
    assert len(body_tasks) == 5 and all(task is me for task in body_tasks)  # handed off
    assert client.tasks[-1] is not me  # the end is the writer's own


async def test_a_send_failing_in_the_flights_task_fails_the_writer_not_the_flight() -> None:
    client = FakeClient(fail_on=b"data: boom\n\n")
    writer = ResponseWriter(client.receive, client.send, [])
    deserted = trio.Event()
    hub = Hub(SharePolicy(), deserted.set)
    listener = hub.subscribe()
    raised: list[BaseException] = []

    async def drain() -> None:
        try:
            await writer.drain(listener, True)
        except RuntimeError as exc:
            raised.append(exc)
        finally:
            hub.unsubscribe(listener)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await hub.publish(Head(200, SSE))
        await trio.testing.wait_all_tasks_blocked()
        await hub.publish(b"data: ok\n\n")
        await hub.publish(b"data: boom\n\n")  # fails in this task: the flight goes on
        await trio.testing.wait_all_tasks_blocked()
        await hub.publish(b"data: after\n\n")  # nobody listens any more: dropped quietly
    assert [str(e) for e in raised] == ["the server's send failed"]  # raised in the writer's task
    assert deserted.is_set() and hub.listeners == 0
    assert b"after" not in client.body


async def test_a_client_leaving_mid_stream_is_client_left() -> None:
    client = FakeClient()
    writer = ResponseWriter(client.receive, client.send, [])
    hub = Hub(SharePolicy(), lambda: None)
    listener = hub.subscribe()
    delivery = None

    async def drain() -> None:
        nonlocal delivery
        try:
            delivery = await writer.drain(listener, True)
        finally:
            hub.unsubscribe(listener)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await hub.publish(Head(200, SSE))
        await trio.testing.wait_all_tasks_blocked()
        await hub.publish(b"data: 1\n\n")
        client.leave.set()
        await trio.testing.wait_all_tasks_blocked()
        await hub.publish(b"data: 2\n\n")  # the listener left: nothing is sent
    assert delivery is not None and delivery.outcome == CLIENT_LEFT
    assert b"data: 2" not in client.body


def test_a_new_listener_has_no_hand_off() -> None:
    assert new_listener()._hand_off is None  # set only by a writer that has the head
