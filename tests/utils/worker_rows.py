"""Rows in the `workers` table as live, idle workers would write them, without worker processes: for
tests of who gets woken up (core/queue.py `wake_workers`)."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from sqlalchemy import delete

from core.db import db_session
from core.scheduling import direct_queue
from core.tables import WorkerNode
from core.worker_nodes import register_worker
from tests.utils.db import in_session


@contextmanager
def idle_worker_rows(queue: str, broker: str, prefix: str, count: int = 3) -> Iterator[list[str]]:
    """`count` live worker rows named `<prefix>-<hex>@test` that serve `queue`, idle, with nothing loaded;
    their rows and their direct queues' messages are deleted afterwards."""
    names = [f"{prefix}-{uuid.uuid4().hex[:6]}@test" for _ in range(count)]
    for name in names:
        in_session(register_worker, name, "cpu", [direct_queue(name), queue], 1, None)
    try:
        yield names
    finally:
        with db_session() as session:
            session.execute(delete(WorkerNode).where(WorkerNode.name.in_(names)))
        redis.Redis.from_url(broker).delete(*[direct_queue(name) for name in names])
