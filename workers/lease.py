"""Keeps a running job's lease alive from a background thread while its runner works."""

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from core.db import db_session
from core.jobs import renew_lease

logger = logging.getLogger(__name__)


@contextmanager
def hold_lease(job_id: uuid.UUID, attempt: int, lease_s: float) -> Iterator[None]:
    """Renew the job's lease every `lease_s / 3` seconds until the block ends.

    The thread has a session of its own (a session is not thread-safe) and commits each renewal.
    """
    stop = threading.Event()

    def heartbeat() -> None:
        with db_session() as session:
            while not stop.wait(lease_s / 3):
                try:
                    renewed = renew_lease(session, job_id, attempt)
                    session.commit()
                    if not renewed:
                        return  # canceled or taken over: the runner finds out at its next step
                except Exception:
                    session.rollback()
                    logger.exception("could not renew the lease of job %s", job_id)

    thread = threading.Thread(target=heartbeat, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
