"""Nothing lost: workers killed mid-job, a flushed broker, duplicate deliveries and a stray consumer.

These tests kill workers and flush the broker, so they run on services of their own: a private
redis-server on a spare port, a database of their own, real worker processes and a real
`diffq beat` with a reconciler pass every second.
"""

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings
from core.db import make_engine
from core.queue import RUN_JOB_TASK, make_celery
from core.storage import get_storage
from core.tables import Job, JobStatus
from migrations.run import upgrade
from tests.conftest import PG_SERVER, TEST_DB, TEST_OWNER
from tests.utils.jobs import text2img_spec
from tests.utils.services import ROOT, WorkerProcess, start_redis, wait_for

QUEUE = "diffq-test-reliability"
MAX_ATTEMPTS = 2
SETTINGS = {
    "DIFFQ_QUEUE": QUEUE,
    "DIFFQ_LEASE_S": "3",
    "DIFFQ_RECONCILE_INTERVAL_S": "1",
    "DIFFQ_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "DIFFQ_IDLE_POLL_S": "0.5",
}
# Worker settings of their own. "a" holds its leases longer than any test, so that its jobs come
# back through its own main process when its pool process dies; "b"'s jobs come back through
# lease expiry and the reconciler when the whole of "b" is killed.
WORKERS: dict[str, dict[str, str]] = {"a": {"DIFFQ_LEASE_S": "120"}, "b": {}}
FINISH_TIMEOUT_S = 240


@dataclass
class Cluster:
    """Workers and a beat on a private Redis and database, and handles on both for the test."""

    tmp: Path
    env: dict[str, str]
    broker: redis.Redis
    celery: Celery
    sessions: sessionmaker[Session]
    workers: dict[str, WorkerProcess] = field(default_factory=dict)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start_workers(self, *names: str) -> None:
        """Start the named workers that are not running, and wait until all are ready."""
        started = []
        for name in names:
            worker = self.workers.get(name)
            if worker is None or worker.process.poll() is not None:
                self.workers[name] = WorkerProcess(
                    self.tmp / f"{name}.log", env=self.env | WORKERS[name], name=f"{name}@%h", queues=QUEUE
                )
                started.append(name)
        for name in started:
            self.workers[name].wait_ready(timeout=180)

    def stop_workers(self, *names: str) -> None:
        """Stop the named workers, or all."""
        workers = [self.workers[name] for name in names or self.workers if name in self.workers]
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()  # all at once: each waits for its pool to stop
        for worker in workers:
            worker.stop()

    def kill_worker(self, name: str) -> None:
        """SIGKILL a whole worker, main process and pool process, as when its machine is gone."""
        process = self.workers[name].process
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def kill_pool_process(self, name: str) -> None:
        """SIGKILL only the pool process running the job, as the kernel's OOM killer would."""
        pid = self.workers[name].process.pid
        tasks = Path(f"/proc/{pid}/task").iterdir()
        [child] = [child for task in tasks for child in (task / "children").read_text().split()]
        os.kill(int(child), signal.SIGKILL)

    def submit(self, count: int, send: bool = True, **params: object) -> list[uuid.UUID]:
        """Commit `count` text2img jobs in the cluster's queue, then send a wake-up naming each."""
        spec = text2img_spec(**params)
        with self.sessions.begin() as session:
            jobs = [
                Job(
                    type=spec["type"],
                    model=spec["model"],
                    params=spec["params"],
                    queue=QUEUE,
                    owner=TEST_OWNER,
                )
                for _ in range(count)
            ]
            session.add_all(jobs)
        job_ids = [job.id for job in jobs]
        if send:
            for job_id in job_ids:
                self.celery.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=QUEUE)
        return job_ids

    def jobs(self, job_ids: list[uuid.UUID]) -> list[Job]:
        with self.sessions() as session:
            found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
        return [found[job_id] for job_id in job_ids]

    def wait_job(self, job_id: uuid.UUID, what: str, predicate: Callable[[Job], bool]) -> Job:
        return wait_for(
            lambda: next((job for job in self.jobs([job_id]) if predicate(job)), None),
            FINISH_TIMEOUT_S,
            f"job {job_id} {what}",
            interval=0.05,
        )

    def wait_finished(self, job_ids: list[uuid.UUID]) -> list[Job]:
        def finished() -> list[Job] | None:
            jobs = self.jobs(job_ids)
            return jobs if all(job.status in JobStatus.FINISHED for job in jobs) else None

        return wait_for(finished, FINISH_TIMEOUT_S, f"{len(job_ids)} jobs to finish", interval=0.1)

    def successes(self, job_id: uuid.UUID) -> int:
        """How many times a worker recorded this job as succeeded, over all workers' logs."""
        line = f"job {job_id} succeeded"
        return sum(self.log(name).count(line) for name in self.workers)


def running(attempt: int) -> Callable[[Job], bool]:
    """The job runs its `attempt`th attempt and is past its first denoising step."""

    def runs(job: Job) -> bool:
        started = (job.progress or {}).get("step", 0) >= 1
        return job.status == JobStatus.RUNNING and job.attempts == attempt and started

    return runs


def worker_name(job: Job) -> str:
    assert job.worker is not None
    return job.worker.partition("@")[0]


def handed_back(log: str, job_id: uuid.UUID, status: str) -> bool:
    """Whether the worker's log says it handed back `job_id` as `status` when its pool process died: by its
    main process (the task failed), or by the pool process that replaced the dead one, whichever was first."""
    return (
        f"the process running job {job_id} died; job {status}" in log
        or f"job {job_id} that it held is {status}" in log
    )


def assert_one_set_of_outputs(job: Job, num_images: int) -> None:
    keys = [output["key"] for output in job.outputs]
    assert keys == [f"jobs/{job.id}/{index}.png" for index in range(num_images)]
    assert get_storage().list(f"jobs/{job.id}/") == keys


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory) -> Iterator[str]:
    """A redis-server of this module's own, so that flushing it touches nothing shared."""
    url, server = start_redis(tmp_path_factory.mktemp("redis") / "redis.log")
    yield url
    server.terminate()
    server.wait(timeout=30)


@contextmanager
def migrated_database(name: str) -> Iterator[str]:
    """The URL of a new database `name` on the tests' server, migrated; dropped afterwards."""
    admin = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = f"{PG_SERVER}/{name}"
    upgrade(database_url=url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def private_database() -> Iterator[str]:
    with migrated_database(f"{TEST_DB}_reliability") as url:
        yield url


@pytest.fixture(scope="module")
def stray_database() -> Iterator[str]:
    """Another deployment's database, migrated and empty."""
    with migrated_database(f"{TEST_DB}_stray") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(models_dir, s3, private_redis, private_database, tmp_path_factory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("reliability")
    env = SETTINGS | {"DIFFQ_BROKER_URL": private_redis, "DIFFQ_DATABASE_URL": private_database}
    engine = make_engine(private_database)
    settings = get_settings().model_copy(update={"broker_url": private_redis, "queue": QUEUE})
    cluster = Cluster(
        tmp=tmp,
        env=env,
        broker=redis.Redis.from_url(private_redis),
        celery=make_celery(settings),
        sessions=sessionmaker(bind=engine, expire_on_commit=False),
    )
    beat_log = (tmp / "beat.log").open("ab")
    beat = subprocess.Popen(
        [sys.executable, "-m", "cli", "beat", "--loglevel", "INFO"],
        cwd=ROOT,
        env=os.environ | env,
        stdout=beat_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield cluster
    finally:
        cluster.stop_workers()
        beat.terminate()
        beat.wait(timeout=30)
        beat_log.close()
        engine.dispose()


def test_flushed_broker_and_every_queued_job_still_completes(cluster) -> None:
    cluster.stop_workers()  # nothing consumes: the wake-ups wait in the broker
    job_ids = cluster.submit(4, num_inference_steps=10, num_images=1)
    assert cluster.broker.llen(QUEUE) == 4
    assert cluster.broker.flushdb()
    # And one committed job whose wake-up was never sent.
    job_ids += cluster.submit(1, send=False, num_inference_steps=10, num_images=1)

    cluster.start_workers("a", "b")
    jobs = cluster.wait_finished(job_ids)
    assert [(job.status, job.attempts) for job in jobs] == [(JobStatus.SUCCEEDED, 1)] * len(jobs)
    for job in jobs:
        assert cluster.successes(job.id) == 1
        assert_one_set_of_outputs(job, 1)
    # No message named them: the idle workers found them in the jobs table.
    assert "the jobs table holds work for this worker" in cluster.log("a") + cluster.log("b")


def test_a_stray_consumer_on_another_database_loses_no_job(cluster, stray_database) -> None:
    """A worker on the same broker but another database takes the wake-ups: it says it is misconfigured,
    gives them back and stops consuming, and the cluster's workers run every job."""
    cluster.stop_workers()
    WORKERS["stray"] = {"DIFFQ_DATABASE_URL": stray_database}
    try:
        cluster.start_workers("stray")
        job_ids = cluster.submit(10, num_inference_steps=2, num_images=1)
        wait_for(lambda: "MISCONFIGURED" in cluster.log("stray"), 60, "the stray to take a wake-up")
        cluster.start_workers("a", "b")
        jobs = cluster.wait_finished(job_ids)
    finally:
        cluster.stop_workers("stray")
        del WORKERS["stray"]
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * len(jobs)
    assert {worker_name(job) for job in jobs} <= {"a", "b"}
    for job in jobs:
        assert cluster.successes(job.id) == 1
    log = cluster.log("stray")
    assert "which this worker's database" in log and f"no longer consuming '{QUEUE}'" in log


def test_duplicate_delivery_of_a_running_job_is_skipped(cluster) -> None:
    cluster.start_workers("a", "b")
    [job_id] = cluster.submit(1, num_inference_steps=250, num_images=1)
    job = cluster.wait_job(job_id, "to run", running(1))
    idle = "b" if worker_name(job) == "a" else "a"

    cluster.celery.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=QUEUE)
    skipped = f"woken for job {job_id}, but no queued job is this worker's to run"
    wait_for(lambda: skipped in cluster.log(idle), 60, "the duplicate to be skipped")
    assert cluster.jobs([job_id])[0].status == JobStatus.RUNNING  # skipped while the job ran

    [done] = cluster.wait_finished([job_id])
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 1 and worker_name(done) != idle
    assert cluster.successes(job_id) == 1
    assert_one_set_of_outputs(done, 1)


def test_sigkill_a_worker_mid_job_and_every_job_succeeds_once(cluster) -> None:
    cluster.start_workers("a", "b")
    job_ids = cluster.submit(8, num_inference_steps=60, num_images=2)

    # Let "b" finish a job, then kill it, main process and pool process, inside its next one.
    def b_runs_its_second_job() -> Job | None:
        jobs = cluster.jobs(job_ids)
        done_by_b = [j for j in jobs if j.status == JobStatus.SUCCEEDED and worker_name(j) == "b"]
        running_on_b = [j for j in jobs if running(1)(j) and worker_name(j) == "b"]
        return running_on_b[0] if done_by_b and running_on_b else None

    victim = wait_for(b_runs_its_second_job, FINISH_TIMEOUT_S, "b to run its second job", interval=0.05)
    cluster.kill_worker("b")

    jobs = cluster.wait_finished(job_ids)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * len(jobs)
    by_id = {job.id: job for job in jobs}
    # The killed job was taken over once its lease ran out; no other job was run twice.
    assert by_id[victim.id].attempts == 2 and worker_name(by_id[victim.id]) == "a"
    assert [job.attempts for job in jobs if job.id != victim.id] == [1] * (len(jobs) - 1)
    assert {worker_name(job) for job in jobs} == {"a", "b"}  # the batch spread over both
    for job in jobs:
        assert cluster.successes(job.id) == 1
        assert_one_set_of_outputs(job, 2)
    assert f"job {victim.id} lost its worker; requeued" in cluster.log("beat")


def test_killed_pool_process_hands_its_job_back(cluster) -> None:
    cluster.stop_workers("b")
    cluster.start_workers("a")  # whose lease outlasts the test: no help from the reconciler
    [job_id] = cluster.submit(1, num_inference_steps=150, num_images=1)
    job = cluster.wait_job(job_id, "to run", running(1))
    assert worker_name(job) == "a"
    cluster.kill_pool_process("a")

    [done] = cluster.wait_finished([job_id])
    assert done.status == JobStatus.SUCCEEDED and done.attempts == 2
    assert cluster.successes(job_id) == 1
    assert_one_set_of_outputs(done, 1)
    assert handed_back(cluster.log("a"), job_id, JobStatus.QUEUED)


def test_a_job_killed_max_attempts_times_fails_with_worker_lost(cluster) -> None:
    cluster.stop_workers("b")
    cluster.start_workers("a")
    [job_id] = cluster.submit(1, num_inference_steps=150, num_images=1)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job = cluster.wait_job(job_id, f"to run attempt {attempt}", running(attempt))
        assert worker_name(job) == "a"
        cluster.kill_pool_process("a")

    [done] = cluster.wait_finished([job_id])
    assert done.status == JobStatus.FAILED and done.attempts == MAX_ATTEMPTS
    assert done.error is not None and done.error["code"] == "worker_lost"
    assert f"{MAX_ATTEMPTS} times" in done.error["message"]
    assert done.outputs == [] and get_storage().list(f"jobs/{job_id}/") == []
    assert cluster.successes(job_id) == 0
    assert handed_back(cluster.log("a"), job_id, JobStatus.FAILED)


def start_recorded_worker(cluster: Cluster, name: str, fault: str, log: Path) -> None:
    """A worker that records when it denoises and stores each job, and holds the store as `fault` says
    (tests/utils/finish_faults.py); one call per job (no fusion); its leases outlast the test."""
    env = cluster.env | {
        "DIFFQ_LEASE_S": "120",
        "DIFFQ_FUSION": "false",
        "DIFFQ_TEST_FINISH_LOG": str(log),
        "DIFFQ_TEST_FINISH_FAULT": fault,
    }
    worker = WorkerProcess(
        cluster.tmp / f"{name}.log",
        env=env,
        name=f"{name}@%h",
        queues=QUEUE,
        preload="tests.utils.finish_faults",
    )
    cluster.workers[name] = worker
    worker.wait_ready(timeout=180)


def recorded(log: Path) -> list[tuple[str, str, int]]:
    """(what, job id, attempt) per line, in the order the worker did them."""
    return [
        (what, job_id, int(attempt)) for what, job_id, attempt in map(str.split, log.read_text().splitlines())
    ]


def test_storing_a_jobs_outputs_overlaps_denoising_the_next(cluster, tmp_path) -> None:
    cluster.stop_workers()
    log = tmp_path / "finish.log"
    start_recorded_worker(cluster, "overlap", "wait_for_next", log)
    try:
        first, second = cluster.submit(2, num_inference_steps=2, num_images=1)
        done = cluster.wait_finished([first, second])
    finally:
        cluster.stop_workers("overlap")

    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 2
    for job in done:
        assert_one_set_of_outputs(job, 1)
    order = [(what, uuid.UUID(job_id)) for what, job_id, _attempt in recorded(log)]
    # The first job's upload began before the second job's denoising and ended after it had started.
    assert order.index(("store", first)) < order.index(("denoise", second)) < order.index(("stored", first))
    assert order.index(("denoise", first)) < order.index(("store", first))


def test_a_kill_during_the_upload_loses_no_job_and_never_succeeds_it_without_outputs(
    cluster, tmp_path
) -> None:
    cluster.stop_workers()
    log = tmp_path / "finish.log"
    start_recorded_worker(cluster, "hang", "hang_first_attempt", log)
    try:
        [job_id] = cluster.submit(1, num_inference_steps=2, num_images=1)
        wait_for(
            lambda: log.exists() and ("store", str(job_id), 1) in recorded(log), 120, "the upload to start"
        )
        # Denoised, its upload under way in the finisher (the task has returned): still running, no outputs.
        [job] = cluster.jobs([job_id])
        assert job.status == JobStatus.RUNNING and job.attempts == 1
        assert get_storage().list(f"jobs/{job_id}/") == []
        cluster.kill_pool_process("hang")

        [done] = cluster.wait_finished([job_id])
    finally:
        cluster.stop_workers("hang")
    # Handed back by the pool process that replaced the killed one (the lease outlasts the test), run again.
    assert f"starts again: job {job_id} that it held is queued" in cluster.log("hang")
    assert done.status == JobStatus.SUCCEEDED and done.attempts == 2
    assert cluster.successes(job_id) == 1
    assert_one_set_of_outputs(done, 1)
    assert ("stored", str(job_id), 1) not in recorded(log)
