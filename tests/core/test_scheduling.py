"""The claim's order (core/scheduling.py) on the real Postgres: priority, fair share between owners, the
affinity bound, training apart, the per-owner running limit, and claims racing from many threads."""

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from core.config import Settings, get_settings
from core.db import db_session
from core.indexed_claim import indexed_next_job
from core.jobs import claim, claim_partners, finish_job, unclaim
from core.scheduling import (
    Claimer,
    claim_params,
    next_job_query,
    priority_problem,
    serves_training,
    work_for,
    worker_queues,
)
from core.tables import Job, JobStatus, utcnow
from tests.utils.db import in_session


@pytest.fixture
def queue(database: str) -> Iterator[str]:
    """A queue of this test's own: only its claimers see its jobs."""
    name = f"sched-{uuid.uuid4().hex[:8]}"
    yield name
    with db_session() as session:
        session.execute(delete(Job).where(Job.queue == name))


@pytest.fixture
def settings(monkeypatch) -> Settings:
    settings = get_settings()
    for name, value in {
        "fair_share": True,
        "affinity": True,
        "affinity_max_wait_s": 30.0,
        "max_running_jobs": 0,
    }.items():
        monkeypatch.setattr(settings, name, value)
    return settings


def add_jobs(queue: str, count: int, *, age_s: float = 0, **values) -> list[uuid.UUID]:
    """`count` queued jobs in `queue`, created `age_s` ago, a millisecond apart in submission order."""
    start = utcnow() - timedelta(seconds=age_s)
    values = {"type": "text2img", "model": "m", "owner": "a"} | values
    with db_session() as session:
        jobs = [
            Job(params={}, queue=queue, created_at=start + timedelta(milliseconds=index), **values)
            for index in range(count)
        ]
        session.add_all(jobs)
    return [job.id for job in jobs]


def claimer(queue: str, name: str = "w", **fields) -> Claimer:
    return Claimer(worker=name, queues=(queue,), **fields)


def claim_one(who: Claimer) -> Job | None:
    jobs = in_session(claim, who)
    assert len(jobs) <= 1
    return jobs[0] if jobs else None


def finish(job: Job) -> None:
    assert in_session(finish_job, job.id, job.attempts, JobStatus.SUCCEEDED, outputs=[])


def run_in_order(who: Claimer, count: int, finish_each: bool = True) -> list[Job]:
    """Claim `count` jobs one after another, as one worker does (finishing each before the next)."""
    claimed = []
    for _ in range(count):
        job = claim_one(who)
        assert job is not None
        claimed.append(job)
        if finish_each:
            finish(job)
    return claimed


def test_higher_priority_runs_first_then_oldest(queue, settings) -> None:
    low = add_jobs(queue, 2, priority=0)
    high = add_jobs(queue, 2, priority=5)
    negative = add_jobs(queue, 1, priority=-3)
    order = [job.id for job in run_in_order(claimer(queue), 5)]
    assert order == high + low + negative
    assert claim_one(claimer(queue)) is None


def test_a_single_job_of_another_owner_goes_before_a_backlog(queue, settings) -> None:
    """One worker, owner a's 50 jobs, then owner b's 3: b's run at once, alternating with a's."""
    add_jobs(queue, 50, owner="a", age_s=60)
    b_jobs = add_jobs(queue, 3, owner="b")
    order = run_in_order(claimer(queue), 8)
    # a ran one first (older, and neither owner ran), then they take turns while b has jobs.
    assert [job.owner for job in order] == ["a", "b", "a", "b", "a", "b", "a", "a"]
    assert [job.id for job in order if job.owner == "b"] == b_jobs


def test_the_owner_with_fewer_running_jobs_goes_first(queue, settings) -> None:
    add_jobs(queue, 10, owner="a", age_s=60)
    add_jobs(queue, 10, owner="b")
    # Four workers start one job each, finishing none: two per owner, not four of a's.
    owners = [job.owner for job in run_in_order(claimer(queue), 4, finish_each=False)]
    assert sorted(owners) == ["a", "a", "b", "b"]


def test_without_fair_share_the_backlog_runs_first(queue, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "fair_share", False)
    add_jobs(queue, 5, owner="a", age_s=60)
    add_jobs(queue, 2, owner="b")
    assert [job.owner for job in run_in_order(claimer(queue), 7)] == ["a"] * 5 + ["b"] * 2


def test_priority_goes_before_fair_share(queue, settings) -> None:
    add_jobs(queue, 3, owner="a", priority=1, age_s=10)
    add_jobs(queue, 3, owner="b")
    assert [job.owner for job in run_in_order(claimer(queue), 6)] == ["a"] * 3 + ["b"] * 3


def test_affinity_prefers_a_loaded_model_but_never_past_a_starved_job(queue, settings) -> None:
    [cold] = add_jobs(queue, 1, model="cold", age_s=10)
    [warm] = add_jobs(queue, 1, model="warm")
    who = claimer(queue, models=("warm",))
    assert claim_one(who).id == warm  # younger, but its model is loaded here
    assert claim_one(who).id == cold

    [starved] = add_jobs(queue, 1, model="cold", age_s=settings.affinity_max_wait_s + 5)
    [warm] = add_jobs(queue, 1, model="warm")
    assert claim_one(who).id == starved  # waited past the bound: affinity can't pass it over
    assert claim_one(who).id == warm


def test_affinity_off_is_oldest_first(queue, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "affinity", False)
    [cold] = add_jobs(queue, 1, model="cold", age_s=10)
    add_jobs(queue, 1, model="warm")
    assert claim_one(claimer(queue, models=("warm",))).id == cold


def test_a_generation_only_worker_never_claims_training(queue, settings) -> None:
    [training] = add_jobs(queue, 1, type="train_unconditional", model=None, age_s=60)
    [generation] = add_jobs(queue, 1)
    generation_only = claimer(queue, trains=False)
    assert claim_one(generation_only).id == generation
    assert claim_one(generation_only) is None
    with db_session() as session:
        assert work_for(session, generation_only) is None
    # A worker that serves both takes generation first, then training.
    assert claim_one(claimer(queue)).id == training


def test_what_a_worker_serves(settings) -> None:
    node = "gpu0@host.example"
    direct = f"{settings.queue}.gpu0-host.example"
    assert worker_queues("generation", node, settings) == [direct, settings.queue]
    assert worker_queues("both", node, settings) == [direct, settings.queue, settings.train_queue]
    assert worker_queues("training", node, settings) == [direct, settings.train_queue]
    assert worker_queues("both", node, settings, ["custom"]) == [direct, "custom"]
    assert not serves_training([direct, settings.queue], node, settings)
    assert serves_training([direct, settings.queue, settings.train_queue], node, settings)
    assert serves_training([direct, "custom"], node, settings)  # a named queue may hold either
    with pytest.raises(ValueError, match="'generation', 'training' or 'both'"):
        worker_queues("everything", node, settings)


def test_an_owner_never_runs_more_than_max_running_jobs(queue, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "max_running_jobs", 2)
    add_jobs(queue, 5, owner="a", age_s=60)
    [b_job] = add_jobs(queue, 1, owner="b")
    first = run_in_order(claimer(queue), 3, finish_each=False)
    assert sorted(job.owner for job in first) == ["a", "a", "b"]
    assert claim_one(claimer(queue)) is None  # a is at its limit, b has nothing left
    with db_session() as session:
        assert work_for(session, claimer(queue)) is None
    finish(first[0] if first[0].owner == "a" else first[1])
    assert claim_one(claimer(queue)).owner == "a"


def test_racing_claims_take_each_job_once_and_keep_the_owner_limit(queue, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "max_running_jobs", 3)
    add_jobs(queue, 40, owner="a")
    add_jobs(queue, 40, owner="b")
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while (job := claim_one(claimer(queue, name))) is not None:
                with lock:
                    claimed.append(job.id)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(claimed) == len(set(claimed)) == 6  # three per owner, none twice
    with db_session() as session:
        running = session.execute(
            select(Job.owner, func.count())
            .where(Job.queue == queue, Job.status == "running")
            .group_by(Job.owner)
        ).all()
    assert sorted(running) == [("a", 3), ("b", 3)]


def test_priority_problem_names_the_limit() -> None:
    assert priority_problem(10, 10) is None
    assert priority_problem(-5, 0) is None
    problem = priority_problem(11, 10)
    assert problem is not None and "11" in problem and "at most 10" in problem


def test_fusion_partners_share_the_key_and_keep_the_owner_limit(queue, settings, monkeypatch) -> None:
    same = add_jobs(queue, 5, fuse_key="k", age_s=10)
    add_jobs(queue, 2, fuse_key="other", age_s=20)
    add_jobs(queue, 2, fuse_key="k", owner="b", priority=-1, age_s=5)
    who = claimer(queue)
    with db_session() as session:
        [lead] = claim(session, who)  # the oldest: the "other" key
        assert lead.fuse_key == "other"
        assert [job.fuse_key for job in claim_partners(session, lead, who, 8)] == ["other"]
        [lead] = claim(session, who)
        partners = claim_partners(session, lead, who, 3)
        assert lead.id == same[0] and [job.id for job in partners] == same[1:4]  # by age, up to the limit
        assert claim_partners(session, Job(fuse_key=None), who, 3) == []

    monkeypatch.setattr(settings, "max_running_jobs", 5)
    with db_session() as session:  # a has 6 running: none of its jobs; b has room for its two
        [lead] = claim(session, who)
        assert lead.owner == "b"
        partners = claim_partners(session, lead, who, 8)
        assert [job.owner for job in partners] == ["b"]


def add_batch(queue: str, count: int, **values) -> list[uuid.UUID]:
    """A batch of `count` queued jobs written as the API writes one: a single created_at, and
    batch_index 0…count-1; their ids in batch order (random: in their order one time in count!)."""
    from core.tables import Batch

    created = utcnow()
    with db_session() as session:
        batch = Batch(owner="a", total=count, source={})
        session.add(batch)
        session.flush()
        jobs = [
            Job(
                type="text2img",
                model="m",
                owner="a",
                params={},
                queue=queue,
                created_at=created,
                batch_id=batch.id,
                batch_index=index,
                **values,
            )
            for index in range(count)
        ]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def test_a_batch_runs_in_its_order(queue, settings) -> None:
    """A batch's jobs are written together with one created_at: their batch_index, not their random
    ids, decides their order."""
    ids = add_batch(queue, 30)
    order = [job.id for job in run_in_order(claimer(queue), 30)]
    assert order == ids


def test_fusion_partners_follow_the_batch_order(queue, settings) -> None:
    """A fused call of a batch's jobs takes the lead's successors in the batch, not jobs picked by
    their random ids among the batch's one created_at."""
    ids = add_batch(queue, 24, fuse_key="k")
    who = claimer(queue)
    calls = []
    with db_session() as session:
        for _ in range(3):
            [lead] = claim(session, who)
            calls.append([lead.id] + [job.id for job in claim_partners(session, lead, who, 7)])
    assert calls == [ids[0:8], ids[8:16], ids[16:24]]


JOB_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "owner": st.sampled_from(["a", "a", "b", "c"]),
            "queue": st.sampled_from([0, 0, 1]),
            "priority": st.sampled_from([0, 0, 0, 1, -1]),
            # Past the 30 s affinity bound or not; equal ages make ties for batch_index and the id.
            "age_s": st.sampled_from([0, 0, 5, 40, 100]),
            "model": st.sampled_from(["m1", "m2", "m2", "m2", None]),
            "type": st.sampled_from(["text2img", "text2img", "train_lora"]),
            "batch_index": st.none() | st.integers(0, 3),
            "status": st.sampled_from(["queued", "queued", "queued", "running", "succeeded"]),
        }
    ),
    min_size=1,
    max_size=25,
)


@given(
    rows=JOB_ROWS,
    models=st.sampled_from([(), ("m1",), ("m1", "m2")]),
    trains=st.booleans(),
    fair_share=st.booleans(),
    affinity=st.booleans(),
    max_running=st.sampled_from([0, 1, 2]),
    served=st.sampled_from([(0,), (0, 1)]),
)
@hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_index_walk_claims_the_job_the_full_order_claims(
    database, rows, models, trains, fair_share, affinity, max_running, served
) -> None:
    """core/indexed_claim.py against `next_job_query`, on random queues: the same job, or none for both."""
    queues = [f"walk-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    knobs = {"fair_share": fair_share, "affinity": affinity, "max_running_jobs": max_running}
    settings = get_settings().model_copy(update=knobs | {"affinity_max_wait_s": 30.0})
    who = Claimer(worker="w", queues=tuple(queues[i] for i in served), models=models, trains=trains)
    now = utcnow()
    with db_session() as session:
        for row in rows:
            created = now - timedelta(seconds=row["age_s"])
            session.add(
                Job(
                    params={},
                    queue=queues[row["queue"]],
                    created_at=created,
                    started_at=None if row["status"] == "queued" else created + timedelta(seconds=1),
                    **{k: v for k, v in row.items() if k not in ("queue", "age_s")},
                )
            )
        session.flush()
        params = claim_params(settings, now)
        full = session.scalar(next_job_query(who, settings), params)
        walked = session.scalar(
            indexed_next_job(
                who.queues,
                models if affinity and models else (),
                trains,
                max_running,
                fair_share,
                bool(affinity and models),
            ),
            params,
        )
        session.rollback()
    assert walked == full, (rows, who, knobs)


def test_a_claim_for_loaded_models_only_leaves_a_job_that_needs_a_load(queue, settings) -> None:
    """A task going on after a call (workers/tasks.py) takes the best job only if its model is loaded
    there; it never takes a worse job instead, and the best one stays queued for the wake-ups."""
    [cold] = add_jobs(queue, 1, model="cold", age_s=60)  # starved: the best job, whatever is loaded
    [warm] = add_jobs(queue, 1, model="warm")
    who = claimer(queue, models=("warm",))
    assert in_session(claim, who, loaded_only=True) == []
    with db_session() as session:
        assert session.get(Job, cold).status == JobStatus.QUEUED
        assert session.get(Job, warm).status == JobStatus.QUEUED
    assert claim_one(who).id == cold  # a task's first claim takes it
    [job] = in_session(claim, who, loaded_only=True)
    assert job.id == warm


def test_an_unclaimed_job_is_queued_as_it_was(queue, settings) -> None:
    """workers/next_claim.py gives back a job claimed ahead that never ran: no attempt counted."""
    [job_id] = add_jobs(queue, 1)
    job = claim_one(claimer(queue))
    assert job.attempts == 1
    assert in_session(unclaim, job_id, "someone else", 1) is False  # fenced on the worker
    assert in_session(unclaim, job_id, job.worker, 1) is True
    with db_session() as session:
        again = session.get(Job, job_id)
        assert (again.status, again.attempts, again.worker) == (JobStatus.QUEUED, 0, None)
    assert claim_one(claimer(queue)).attempts == 1
