"""Keeps a running job's lease alive from a background thread while its runner works."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from core.db import db_session
from core.jobs import renew_lease
from workers.heartbeat import Heartbeat


@contextmanager
def hold_lease(job_id: uuid.UUID, attempt: int, lease_s: float) -> Iterator[None]:
    """Renew the job's lease every `lease_s / 3` seconds until the block ends; a renewal that finds the
    job canceled or taken over stops them (the runner finds out at its next step)."""

    def renew() -> bool:
        # The heartbeat's thread has a session of its own: a session is not thread-safe.
        with db_session() as session:
            return renew_lease(session, job_id, attempt)

    with Heartbeat(
        renew,
        lease_s / 3,
        name=f"lease-{job_id}",
        failure=f"could not renew the lease of job {job_id}",
    ):
        yield
