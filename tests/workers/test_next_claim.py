"""workers/next_claim.py: a task's claim ahead starts only before its deadline, holds the leases of what
it claimed until the task has run them, and gives back what it claimed as it was."""

import time
import uuid

from core.db import db_session
from core.jobs import claim
from core.scheduling import Claimer
from core.tables import Job, JobStatus
from tests.utils.jobs import UNSERVED_QUEUE
from workers.lease import LEASES
from workers.next_claim import NextClaim


def test_a_claim_ahead_never_starts_past_the_deadline() -> None:
    calls: list[int] = []
    ahead = NextClaim(lambda: calls.append(1) or [], until=time.monotonic() - 1)
    ahead.start()
    assert not ahead.started and calls == []


def test_a_claim_ahead_holds_its_leases_until_released_and_gives_back_as_it_was(database) -> None:
    with db_session() as session:
        job = Job(type="text2img", model="m", params={}, owner="a", queue=UNSERVED_QUEUE)
        session.add(job)
    who = Claimer(worker=f"ahead-{uuid.uuid4().hex[:6]}", queues=(UNSERVED_QUEUE,), models=("m",))

    def claim_it() -> list[Job]:
        with db_session() as session:
            return claim(session, who)

    ahead = NextClaim(claim_it, until=time.monotonic() + 60)
    ahead.start()
    ahead.start()  # a second last step (a fused call's other job) claims nothing more
    [claimed] = ahead.jobs()
    assert claimed.id == job.id and claimed.attempts == 1
    assert LEASES.held.get((job.id, 1)) == 1
    ahead.give_back()
    assert (job.id, 1) not in LEASES.held
    with db_session() as session:
        again = session.get(Job, job.id)
        assert (again.status, again.attempts, again.worker) == (JobStatus.QUEUED, 0, None)
        session.delete(again)
