"""Fan-out rules of the hub, on trio memory objects and MockClock: no sockets, no provider."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_balancer.flight.hub import LISTENER_BUFFER_BYTES, Head, Hub, Item, Listener, SharePolicy

HEAD = Head(200, [(b"content-type", b"text/event-stream")])


class Deserted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def drain(listener: Listener, out: list[Item]) -> None:
    async for item in listener:
        out.append(item)


class TestOneListener:
    async def test_backpressure_waits_for_the_reader(self) -> None:
        hub = Hub(SharePolicy(), Deserted())
        listener = hub.subscribe()
        chunk = b"x" * (LISTENER_BUFFER_BYTES // 2)
        blocked = trio.Event()
        async with trio.open_nursery() as n:

            async def publish_all() -> None:
                for _ in range(4):
                    await hub.publish(chunk)
                blocked.set()

            n.start_soon(publish_all)
            await trio.testing.wait_all_tasks_blocked()
            assert not blocked.is_set() and listener.queued_bytes <= LISTENER_BUFFER_BYTES
            got: list[Item] = []
            for _ in range(4):
                got.append(await listener.receive())
            await blocked.wait()
        assert got == [chunk] * 4

    async def test_the_last_listener_leaving_deserts_the_flight(self) -> None:
        deserted = Deserted()
        hub = Hub(SharePolicy(), deserted)
        a, b = hub.subscribe(), hub.subscribe()
        hub.unsubscribe(a)
        assert deserted.calls == 0
        hub.unsubscribe(b)
        assert deserted.calls == 1

    async def test_orphans_finish_into_the_cache_when_the_policy_says_so(self) -> None:
        deserted = Deserted()
        hub = Hub(SharePolicy(keep_history=True, finish_orphans=True), deserted)
        hub.unsubscribe(hub.subscribe())
        await hub.publish(HEAD)
        assert deserted.calls == 0 and hub.history == [HEAD]

    async def test_leaving_after_the_end_deserts_nothing(self) -> None:
        deserted = Deserted()
        hub = Hub(SharePolicy(), deserted)
        listener = hub.subscribe()
        hub.close()
        hub.unsubscribe(listener)
        assert deserted.calls == 0


class TestSharing:
    async def test_a_late_listener_gets_the_history_first_then_the_rest(self) -> None:
        hub = Hub(SharePolicy(keep_history=True), Deserted())
        first = hub.subscribe()
        await hub.publish(HEAD)
        await hub.publish(b"one")
        late = hub.subscribe()
        await hub.publish(b"two")
        hub.close()
        a: list[Item] = []
        b: list[Item] = []
        await drain(first, a)
        await drain(late, b)
        assert a == b == [HEAD, b"one", b"two"]

    async def test_a_history_past_its_bound_is_let_go_and_no_longer_joinable(self) -> None:
        hub = Hub(SharePolicy(keep_history=True, max_shared_bytes=100), Deserted())
        hub.subscribe()
        await hub.publish(HEAD)
        assert hub.joinable
        await hub.publish(b"x" * 200)
        assert not hub.joinable and hub.history == []

    async def test_a_listener_past_the_lag_bounds_is_cut_off_after_max_lag_s(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        share = SharePolicy(max_lag_events=2, max_lag_bytes=1 << 20, max_lag_s=5.0)
        hub = Hub(share, Deserted())
        fast, stalled = hub.subscribe(), hub.subscribe()
        got: list[Item] = []
        async with trio.open_nursery() as n:
            n.start_soon(drain, fast, got)
            started = trio.current_time()
            for i in range(5):
                await hub.publish(b"%d" % i)
            hub.close()
        assert hub.was_dropped(stalled) and not hub.was_dropped(fast)
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert trio.current_time() - started == pytest.approx(5.0)  # the mock clock: exact

    async def test_a_listener_that_left_is_skipped_not_waited_for(self) -> None:
        hub = Hub(SharePolicy(max_lag_events=1), Deserted())
        left, stays = hub.subscribe(), hub.subscribe()
        left.abandon()
        await hub.publish(b"a")
        await hub.publish(b"b")
        hub.close()
        got: list[Item] = []
        await drain(stays, got)
        assert got == [b"a", b"b"] and hub.listeners == 1

    @settings(max_examples=60, deadline=None)
    @given(
        st.integers(min_value=1, max_value=6),
        st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=30),
    )
    def test_readers_that_keep_up_get_everything_in_order(self, listeners: int, sizes: list[int]) -> None:
        async def main() -> None:
            hub = Hub(SharePolicy(keep_history=True), Deserted())
            queues = [hub.subscribe() for _ in range(listeners)]
            outs: list[list[Item]] = [[] for _ in queues]
            items: list[Item] = [HEAD, *(bytes([i % 256]) * s for i, s in enumerate(sizes))]
            async with trio.open_nursery() as n:
                for q, out in zip(queues, outs, strict=True):
                    n.start_soon(drain, q, out)
                for item in items:
                    await hub.publish(item)
                hub.close()
            assert all(out == items for out in outs)
            assert not any(hub.was_dropped(q) for q in queues)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
