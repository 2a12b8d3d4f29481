import asyncio

from cri_async.core.events import ContainerEvent, EventBus, EventType


def ev(i: int) -> ContainerEvent:
    return ContainerEvent(f"c{i}", EventType.CREATED, i, None, ())


async def test_fan_out_to_every_subscriber_in_order() -> None:
    bus = EventBus(16)
    subs = [bus.subscribe() for _ in range(3)]
    for i in range(5):
        bus.publish(ev(i))
    bus.close()
    for sub in subs:
        assert [e.created_at async for e in sub] == [0, 1, 2, 3, 4]


async def test_slow_subscriber_is_dropped_without_blocking_others() -> None:
    bus = EventBus(4)
    slow, fast = bus.subscribe(), bus.subscribe()
    got: list[int] = []

    async def read_fast() -> None:
        async for e in fast:
            got.append(e.created_at)

    reader = asyncio.create_task(read_fast())
    for i in range(10):
        bus.publish(ev(i))  # never awaits: publishing cannot block the runtime
        await asyncio.sleep(0)
    assert slow.dropped and bus.subscribers == 1
    assert [e async for e in slow] == []  # its stream simply ends
    bus.close()
    await reader
    assert got == list(range(10))


async def test_subscribe_after_close_ends_at_once() -> None:
    bus = EventBus()
    bus.close()
    assert [e async for e in bus.subscribe()] == []


async def test_unsubscribe_on_close() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    sub.close()
    assert bus.subscribers == 0
    bus.publish(ev(1))
