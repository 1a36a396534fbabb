"""Wake-ups (core/queue.py): a batch costs the broker one message per live worker that serves its queue,
and an idle worker that has a job's model loaded is woken in its own queue."""

import uuid
from collections.abc import Iterator

import pytest
import redis

from core.config import get_settings
from core.queue import wake_workers
from core.scheduling import Waiting, direct_queue
from core.worker_nodes import update_worker
from tests.utils.db import in_session
from tests.utils.worker_rows import idle_worker_rows


@pytest.fixture
def queue(broker: str) -> Iterator[str]:
    """A queue of this test's own, which no worker consumes, so its messages can be counted."""
    name = f"diffq-test-wake-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(broker).delete(name)


@pytest.fixture
def workers(database: str, queue: str, broker: str) -> Iterator[list[str]]:
    """Three live worker rows that serve `queue`, idle, with nothing loaded."""
    with idle_worker_rows(queue, broker, "wake") as names:
        yield names


def waiting(queue: str, count: int, model: str = "m") -> list[Waiting]:
    return [Waiting(uuid.uuid4(), queue, "text2img", model) for _ in range(count)]


def lengths(broker: str, *queues: str) -> list[int]:
    client = redis.Redis.from_url(broker)
    return [client.llen(queue) for queue in queues]


def test_a_big_batch_costs_one_message_per_serving_worker(broker, queue, workers) -> None:
    assert in_session(wake_workers, waiting(queue, 10_000)) == 3
    assert lengths(broker, queue) == [3]
    assert in_session(wake_workers, waiting(queue, 2)) == 2  # never more than the jobs


def test_no_worker_known_still_sends_one(broker, queue, database) -> None:
    assert in_session(wake_workers, waiting(queue, 500)) == 1
    assert lengths(broker, queue) == [1]


def test_an_idle_worker_with_the_model_loaded_is_woken_in_its_own_queue(broker, queue, workers) -> None:
    warm, busy, cold = workers
    in_session(update_worker, warm, resident=[{"model": "m", "bytes": 1}])
    in_session(update_worker, busy, resident=[{"model": "m", "bytes": 1}], current_job=uuid.uuid4())
    [job] = waiting(queue, 1)
    assert in_session(wake_workers, [job]) == 1
    assert lengths(broker, direct_queue(warm), direct_queue(busy), direct_queue(cold), queue) == [1, 0, 0, 0]
    raw = redis.Redis.from_url(broker).lindex(direct_queue(warm), 0)
    assert str(job.id) in raw.decode()  # the wake-up names the job, for Flower and the logs

    settings = get_settings()
    settings.affinity = False
    try:
        assert in_session(wake_workers, waiting(queue, 1)) == 1
    finally:
        settings.affinity = True
    assert lengths(broker, direct_queue(warm), queue) == [1, 1]
