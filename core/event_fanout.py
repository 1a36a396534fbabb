"""Live reading of Redis event streams in the API: one shared reader per event loop, fanned out.

An SSE connection that follows a stream (api/routes/events.py) does not read Redis itself: it holds a
`LiveSubscription`, and its event loop's one `StreamReader` runs a single blocking XREAD over every
stream that has a subscription (one Redis connection, however many clients), decodes each entry once
and appends it to the queue of every subscription of its stream. A subscription joins at its first
`next` that waits; `next(0)` only reads the stream as it is (XRANGE), for a stream that has ended.
Replays and catch-ups use the client's other connections (core/events.py bounds them).

The set of streams changes as clients come and go. The reader learns of it by being interrupted: a
subscription that adds a stream, or the last one of a stream that goes, cancels the XREAD in flight
(redis-py drops that connection, as it does for any interrupted command; the next XREAD opens a new
one) and the reader re-issues it over the new set at once. Changes made together (a burst of clients
connecting) cost one re-issue. Cancelling is the simplest wake-up that is immediate: a short block
timeout would delay a new stream's first events by up to that timeout, and a wake-up key would need a
second connection and a write. A quiet set is re-issued every `BLOCK_MS` anyway.

No gap, no duplicate between a subscription's replay and its live part. The reader keeps, per stream,
the id of the last entry it fanned out (its cursor). A subscription to a stream new to the reader sets
the cursor to the stream's last id, read just before (XREVRANGE + - COUNT 1); to a stream already read,
it takes the cursor as it is. Registering is synchronous (nothing awaited between reading the cursor and
joining the stream's subscribers), and so is fanning a batch out and moving the cursor past it. So every
entry up to the cursor was in Redis before the subscription started, and every later one goes into its
queue. `next` reads the former with XRANGE (after its start id, exclusive, up to the cursor, inclusive),
then hands out the queue, skipping any entry not newer than the last it handed out (a start id ahead of
the cursor). A subscription whose queue would pass `MAX_QUEUED` entries (a client that stopped reading)
drops it and catches up the same way, from the last entry it handed out to the cursor.

Redis unreachable: the reader logs it, retries every `RETRY_S`, and subscriptions wait meanwhile (their
callers' rechecks read the database); a catch-up XRANGE raises redis' ConnectionError to its caller.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio

if TYPE_CHECKING:
    from core.events import Event

logger = logging.getLogger(__name__)

BLOCK_MS = 10_000
READ_COUNT = 1_000
REPLAY_COUNT = 10_000
MAX_QUEUED = 10_000
RETRY_S = 1.0
# (entry id, fields) as redis-py returns a stream entry -> the event
Decode = Callable[[bytes, dict[bytes, bytes]], "Event"]


def newer(event_id: str, than: str) -> bool:
    """Whether Redis stream id `event_id` (`<ms>-<seq>`) comes after `than`."""
    ms, _, seq = event_id.partition("-")
    than_ms, _, than_seq = than.partition("-")
    return (int(ms), int(seq or 0)) > (int(than_ms), int(than_seq or 0))


class StreamReader:
    """The one XREAD of an event loop over every stream with subscriptions (see the module docstring).

    `subscribers` and `cursors` are keyed by Redis key; the reader's task runs while there are any."""

    def __init__(self, client: redis.asyncio.Redis, decode: Decode) -> None:
        self.client = client
        self.decode = decode
        self.subscribers: dict[str, set[LiveSubscription]] = {}
        self.cursors: dict[str, str] = {}
        # The streams (key -> id) of the XREAD in flight, and how many XREADs were issued: for tests.
        self.reading: dict[str, str] = {}
        self.reads = 0
        self._task: asyncio.Task[None] | None = None
        self._read: asyncio.Future[Any] | None = None

    def subscribe(self, key: str, after: str) -> "LiveSubscription":
        """A subscription to `key` from after id `after` (registered at its first `next` that waits)."""
        return LiveSubscription(self, key, after)

    def _add(self, subscription: "LiveSubscription", last_id: str) -> str:
        """Join `subscription` to its stream (synchronous); returns the stream's cursor."""
        key = subscription.key
        cursor = self.cursors.setdefault(key, last_id)
        subscribers = self.subscribers.setdefault(key, set())
        subscribers.add(subscription)
        if len(subscribers) == 1:
            self._wake()
        return cursor

    def _remove(self, subscription: "LiveSubscription") -> None:
        subscribers = self.subscribers.get(subscription.key)
        if subscribers is None or subscription not in subscribers:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self.subscribers[subscription.key]
            del self.cursors[subscription.key]
            self._wake()

    def _wake(self) -> None:
        """Re-issue the XREAD over the current set: cancel the one in flight, or start the reader."""
        if self._read is not None and not self._read.done():
            self._read.cancel()
        if self.subscribers and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="diffq-stream-reader")

    async def _run(self) -> None:
        failing = False
        try:
            while self.subscribers:
                self.reading = dict(self.cursors)
                self.reads += 1
                read = self._read = asyncio.ensure_future(self._xread(self.reading))
                await asyncio.wait([read])
                self._read = None
                if read.cancelled():
                    continue  # the set changed
                error = read.exception()
                if error is not None:
                    if not failing:
                        logger.warning("cannot read event streams (%s); retrying every %s s", error, RETRY_S)
                    failing = True
                    await asyncio.sleep(RETRY_S)
                    continue
                if failing:
                    logger.warning("reading the event streams again")
                failing = False
                self._fan_out(read.result())
        finally:
            if self._read is not None:
                self._read.cancel()
                self._read = None
            self.reading = {}
            self._task = None  # nothing of the loop kept (the store keeps its readers by loop, weakly)

    async def _xread(self, streams: dict[str, str]) -> list[Any]:
        # A coroutine of its own: redis-py's xread() makes its command's coroutine when called, which
        # a read cancelled before it starts would leave never awaited.
        return await self.client.xread(streams, block=BLOCK_MS, count=READ_COUNT)  # type: ignore[arg-type]

    def _fan_out(self, found: list[Any]) -> None:
        """Synchronous: each stream's new entries to its subscriptions, and its cursor past them."""
        for raw_key, entries in found:
            key = raw_key.decode()
            subscribers = self.subscribers.get(key)
            if not subscribers or not entries:
                continue  # its last subscription left while the XREAD was in flight
            events = [self.decode(entry_id, fields) for entry_id, fields in entries]
            self.cursors[key] = events[-1].id
            for subscription in subscribers:
                subscription._deliver(events)


class LiveSubscription:
    """One reader's place in one stream; `next` returns the events after the last it returned.

    Use it as a context manager (or call `close`): a subscription left open keeps its stream read."""

    def __init__(self, reader: StreamReader, key: str, after: str) -> None:
        self.reader = reader
        self.key = key
        self.after = after
        self.registered = False
        # Entries up to this id are to be read from Redis (XRANGE) before the queue.
        self.catch_up: str | None = None
        self.queue: list[Event] = []
        self.ready = asyncio.Event()

    def __enter__(self) -> "LiveSubscription":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader._remove(self)
        self.queue = []

    def _deliver(self, events: list["Event"]) -> None:
        if len(self.queue) + len(events) > MAX_QUEUED:
            self.queue = []
            self.catch_up = events[-1].id
        else:
            self.queue.extend(events)
        self.ready.set()

    async def _register(self) -> None:
        last = await self.reader.client.xrevrange(self.key, count=1)
        cursor = self.reader._add(self, last[0][0].decode() if last else "0-0")
        self.registered = True
        if newer(cursor, self.after):
            self.catch_up = cursor

    async def _xrange(self, until: str) -> list["Event"]:
        client = self.reader.client
        entries = await client.xrange(self.key, min=f"({self.after}", max=until, count=REPLAY_COUNT)
        events = [self.reader.decode(entry_id, fields) for entry_id, fields in entries]
        if events:
            self.after = events[-1].id
        if len(entries) < REPLAY_COUNT and self.catch_up == until:
            self.catch_up = None  # caught up (unless a queue overflow moved it meanwhile)
        return events

    async def next(self, wait_s: float) -> list["Event"]:
        """The events after the last returned (or the start id), oldest first; waits up to `wait_s`
        seconds for one when there are none. 0 returns at once all the stream has now, read with XRANGE
        (what the reader fetched but has not fanned out yet included); queued entries it covers are
        skipped later. The first `next` that waits joins the shared read."""
        if wait_s <= 0:
            return await self._xrange("+")
        if not self.registered:
            await self._register()
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            if self.catch_up is not None:
                events = await self._xrange(self.catch_up)
                if events:
                    return events
            if self.queue:
                events = [event for event in self.queue if newer(event.id, self.after)]
                self.queue = []
                if events:
                    self.after = events[-1].id
                    return events
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            self.ready.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.ready.wait()
            except TimeoutError:
                pass
