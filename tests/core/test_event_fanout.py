"""The shared stream reader (core/event_fanout.py) on the tests' Redis: every subscriber of a stream gets
every event in order, a subscription's replay and live part meet without a gap or a duplicate, and a
subscription that closes leaves the reader's XREAD."""

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest

from core import event_fanout
from core.config import get_settings
from core.event_fanout import LiveSubscription
from core.events import PROGRESS, STATUS, Event, RedisEventStore, job_stream


@pytest.fixture
def store(broker: str) -> Iterator[RedisEventStore]:
    yield RedisEventStore(broker, get_settings())


async def collect(subscription: LiveSubscription, until_step: int) -> list[Event]:
    """Every event `subscription` returns, until the one whose step is `until_step`."""
    got: list[Event] = []
    with subscription:
        while not got or got[-1].data["step"] != until_step:
            events = await subscription.next(5)
            assert events, "no event within 5 s"
            got.extend(events)
    return got


def publish_steps(store: RedisEventStore, stream: str, steps: range) -> list[str]:
    return [store.publish(stream, PROGRESS, {"step": step}) for step in steps]


def test_many_subscribers_of_a_stream_each_get_every_event_in_order(store: RedisEventStore) -> None:
    stream = job_stream(uuid.uuid4())
    key = store.key(stream)

    async def scenario() -> tuple[list[list[Event]], int]:
        reader = store.reader()
        subscriptions = [store.subscribe(stream, store.start) for _ in range(50)]
        readers = [asyncio.create_task(collect(s, 200)) for s in subscriptions]
        while len(reader.subscribers.get(key, ())) < 50 or key not in reader.reading:
            await asyncio.sleep(0.01)
        reads = reader.reads
        await asyncio.to_thread(store.publish, stream, PROGRESS, {"step": 1})
        while not all(s.after != store.start for s in subscriptions):
            await asyncio.sleep(0.01)
        # The XREAD in flight returned the event to all 50 subscribers; the reader issued the next one
        reads_for_one_event = reader.reads - reads
        await asyncio.to_thread(publish_steps, store, stream, range(2, 201))
        return await asyncio.gather(*readers), reads_for_one_event

    received, reads_for_one_event = asyncio.run(scenario())
    assert reads_for_one_event == 1
    expected = [event.id for event in asyncio.run(store.read(stream, store.start, 0))]
    assert len(expected) == 200
    for events in received:
        assert [event.id for event in events] == expected
        assert [event.data["step"] for event in events] == list(range(1, 201))


def test_replay_then_live_has_no_gap_and_no_duplicate(store: RedisEventStore) -> None:
    """Subscribers join while a worker publishes, from the start, from an id in the middle, and to a
    stream that the reader already follows (its cursor ahead of their start), so that their replay
    (XRANGE) and live part (the shared XREAD) meet at every possible moment."""
    stream = job_stream(uuid.uuid4())
    first = publish_steps(store, stream, range(1, 51))
    total = 400

    async def scenario() -> list[tuple[str, list[Event]]]:
        stop_publishing = threading.Event()

        def worker() -> None:
            for step in range(51, total + 1):
                store.publish(stream, PROGRESS, {"step": step})
                if step % 7 == 0:
                    stop_publishing.wait(0.001)

        publisher = asyncio.create_task(asyncio.to_thread(worker))
        readers = []
        for index in range(30):
            after = store.start if index % 2 == 0 else first[index]
            readers.append((after, asyncio.create_task(collect(store.subscribe(stream, after), total))))
            await asyncio.sleep(0.003)
        await publisher
        return [(after, await reader) for after, reader in readers]

    every = None
    for after, events in asyncio.run(scenario()):
        every = every or [event.id for event in asyncio.run(store.read(stream, store.start, 0))]
        start = 0 if after == store.start else every.index(after) + 1
        assert [event.id for event in events] == every[start:]
        assert [event.data["step"] for event in events] == list(range(start + 1, total + 1))


def test_a_subscription_that_closes_leaves_the_read(store: RedisEventStore) -> None:
    kept, left = job_stream(uuid.uuid4()), job_stream(uuid.uuid4())

    async def scenario() -> None:
        reader = store.reader()
        staying = store.subscribe(kept, store.start)
        leaving = store.subscribe(left, store.start)
        waits = [asyncio.create_task(s.next(5)) for s in (staying, leaving)]
        await asyncio.sleep(0.1)
        assert set(reader.reading) == {store.key(kept), store.key(left)}
        waits[1].cancel()  # what a client's disconnect does to its stream's task
        leaving.close()
        assert set(reader.subscribers) == {store.key(kept)}
        await asyncio.to_thread(store.publish, left, PROGRESS, {"step": 1})
        await asyncio.to_thread(store.publish, kept, PROGRESS, {"step": 1})
        assert [event.data["step"] for event in await waits[0]] == [1]
        # The XREAD that delivered it was issued after the close: without the left stream
        assert set(reader.reading) == {store.key(kept)}
        staying.close()
        await asyncio.sleep(0.1)
        assert reader.subscribers == {} and reader.cursors == {} and reader.reading == {}
        assert reader._task is None  # no stream, no reading

    asyncio.run(scenario())


def test_a_subscriber_that_falls_behind_catches_up_from_redis(
    store: RedisEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its queue is dropped past MAX_QUEUED entries; it reads what it missed with XRANGE instead."""
    monkeypatch.setattr(event_fanout, "MAX_QUEUED", 5)
    stream = job_stream(uuid.uuid4())

    async def scenario() -> tuple[list[Event], list[Event]]:
        slow = store.subscribe(stream, store.start)
        fast = store.subscribe(stream, store.start)
        fast_events = asyncio.create_task(collect(fast, 40))
        assert await slow.next(0.05) == []  # joined the read; then reads nothing while 40 arrive
        await asyncio.to_thread(publish_steps, store, stream, range(1, 41))
        done = await fast_events
        return await collect(slow, 40), done

    slow_events, fast_events = asyncio.run(scenario())
    assert [event.data["step"] for event in slow_events] == list(range(1, 41))
    assert [event.id for event in slow_events] == [event.id for event in fast_events]


def test_next_0_reads_the_stream_as_it_is_and_the_queue_skips_it(
    store: RedisEventStore,
) -> None:
    """`next(0)` returns what Redis has now, even what the reader has not fanned out yet; what it
    returned is not returned again from the queue."""
    stream = job_stream(uuid.uuid4())

    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        with store.subscribe(stream, store.start) as subscription:
            assert await subscription.next(0.05) == []
            await asyncio.to_thread(publish_steps, store, stream, range(1, 4))
            now = await subscription.next(0)
            await asyncio.to_thread(store.publish, stream, STATUS, {"status": "succeeded"})
            live = await subscription.next(5)
            rest = await subscription.next(0.1)
        return now, live, rest

    now, live, rest = asyncio.run(scenario())
    assert [event.data["step"] for event in now] == [1, 2, 3]
    assert [event.kind for event in live] == [STATUS] and live[0].is_final()
    assert rest == []


def test_a_burst_of_subscribers_replays_over_a_few_redis_connections(
    store: RedisEventStore, broker: str
) -> None:
    """100 clients connecting at once: their replays wait for one of the loop's ASYNC_CONNECTIONS."""
    import redis

    from core.events import ASYNC_CONNECTIONS

    streams = [job_stream(uuid.uuid4()) for _ in range(5)]
    for stream in streams:
        publish_steps(store, stream, range(1, 21))
    admin = redis.Redis.from_url(broker)
    db = str(admin.connection_pool.connection_kwargs.get("db", 0))

    def connections() -> int:
        return sum(1 for client in admin.client_list() if str(client["db"]) == db)

    before = connections()

    async def scenario() -> tuple[list[list[Event]], int]:
        subscriptions = [store.subscribe(streams[i % 5], store.start) for i in range(100)]
        replays = await asyncio.gather(*(s.next(1) for s in subscriptions))
        during = await asyncio.to_thread(connections)
        for subscription in subscriptions:
            subscription.close()
        return replays, during

    replays, during = asyncio.run(scenario())
    assert all([event.data["step"] for event in events] == list(range(1, 21)) for events in replays)
    assert during - before <= ASYNC_CONNECTIONS
