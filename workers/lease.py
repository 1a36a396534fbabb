"""Keeps running jobs' leases alive from a background thread while their runner works."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from core.db import db_session
from core.jobs import renew_lease
from workers.heartbeat import Heartbeat


@contextmanager
def hold_leases(jobs: list[tuple[uuid.UUID, int]], lease_s: float) -> Iterator[None]:
    """Renew the leases of `jobs` (id, attempt each) every `lease_s / 3` seconds until the block ends; a
    job whose renewal finds it canceled or taken over is renewed no more (its runner finds out at its
    next step), and the renewals stop when none is left."""
    held = list(jobs)

    def renew() -> bool:
        # The heartbeat's thread has a session of its own: a session is not thread-safe.
        with db_session() as session:
            held[:] = [(job_id, attempt) for job_id, attempt in held if renew_lease(session, job_id, attempt)]
        return bool(held)

    names = ", ".join(str(job_id) for job_id, _attempt in jobs)
    with Heartbeat(
        renew, lease_s / 3, name=f"lease-{jobs[0][0]}", failure=f"could not renew the lease of {names}"
    ):
        yield
