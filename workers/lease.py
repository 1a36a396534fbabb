"""Keeps running jobs' leases alive from one background thread per process while their runner (or the
finisher, workers/finisher.py) works.

The thread is started on first use in the process that holds leases (a pool process forks after import)
and runs for the process's life: a call starts and joins no thread of its own. It renews every held lease
every `lease_s / 3` seconds, on a session of its own.
"""

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from core.db import db_session
from core.jobs import renew_lease
from workers.heartbeat import Heartbeat

Lease = tuple[uuid.UUID, int]  # (job id, attempt)


class Leases:
    def __init__(self) -> None:
        self.held: dict[Lease, int] = {}  # how many blocks hold each lease
        self.lock = threading.Lock()
        self.heartbeat: Heartbeat | None = None
        self.pid: int | None = None

    def hold(self, jobs: list[Lease], lease_s: float) -> None:
        with self.lock:
            for job in jobs:
                self.held[job] = self.held.get(job, 0) + 1
            if self.heartbeat is None or self.pid != os.getpid():  # none yet in this process
                self.pid = os.getpid()
                self.heartbeat = Heartbeat(
                    self._renew, lease_s / 3, name="diffq-leases", failure="could not renew leases"
                ).start()

    def release(self, jobs: list[Lease]) -> None:
        with self.lock:
            for job in jobs:
                if job in self.held:
                    self.held[job] -= 1
                    if self.held[job] <= 0:
                        del self.held[job]

    def _renew(self) -> None:
        with self.lock:
            jobs = list(self.held)
        if not jobs:
            return
        lost = []
        with db_session() as session:
            for job in jobs:
                if not renew_lease(session, *job):
                    lost.append(job)
        with self.lock:
            for job in lost:  # canceled or taken over: its runner finds out at its next step
                self.held.pop(job, None)


LEASES = Leases()


@contextmanager
def hold_leases(jobs: list[Lease], lease_s: float) -> Iterator[None]:
    """Renew the leases of `jobs` (id, attempt each) every `lease_s / 3` seconds until the block ends; a
    job whose renewal finds it canceled or taken over is renewed no more (its runner finds out at its
    next step)."""
    LEASES.hold(jobs, lease_s)
    try:
        yield
    finally:
        LEASES.release(jobs)
