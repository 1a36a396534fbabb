"""A worker name a live worker holds can't be taken: `diffq worker` refuses to start under it, and a
worker that starts anyway hands back none of the live one's jobs. A name whose holder died (its row
still fresh) or went stale is free, and its jobs are handed back at once."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from core.db import db_session
from core.tables import Job, JobStatus, WorkerNode, utcnow
from core.worker_nodes import register_worker, remove_worker
from workers.fleet import hand_back_at_start, name_in_use

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def name(database) -> Iterator[str]:
    name = f"dup-{uuid.uuid4().hex[:6]}@host"
    yield name
    with db_session() as session:
        remove_worker(session, name)
        session.execute(Job.__table__.delete().where(Job.worker == name))


def held_by(name: str, pid: int, seen_s_ago: float = 0) -> uuid.UUID:
    """A running job of worker `name`, whose row says process `pid`, written `seen_s_ago` seconds ago."""
    with db_session() as session:
        register_worker(session, name, "cpu", ["q"], pid, None)
        session.query(WorkerNode).filter(WorkerNode.name == name).update(
            {"last_seen": utcnow() - timedelta(seconds=seen_s_ago)}
        )
        job = Job(
            type="text2img",
            model="m",
            params={},
            queue="q-unserved",
            status=JobStatus.RUNNING,
            worker=name,
            attempts=1,
            started_at=utcnow(),
            lease_expires_at=utcnow() + timedelta(seconds=60),
        )
        session.add(job)
        session.flush()
        return job.id


def status(job_id: uuid.UUID) -> str:
    with db_session() as session:
        return session.get_one(Job, job_id).status


@pytest.mark.e2e  # a real `diffq` process: seconds, so not in the fast tier
def test_a_live_workers_name_is_refused_and_its_job_kept(name: str) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        job_id = held_by(name, live.pid)
        assert name_in_use(name) == (
            f"a worker named {name} is already running (process {live.pid}); pass --name to start "
            "another next to it (e.g. --name w2@%h), or stop it first"
        )
        hand_back_at_start(name)
        assert status(job_id) == JobStatus.RUNNING
        started = subprocess.run(
            [sys.executable, "-m", "cli", "worker", "--name", name],
            cwd=ROOT,
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 1
        assert started.stderr == f"error: {name_in_use(name)}\n"
        assert status(job_id) == JobStatus.RUNNING
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize(("pid", "seen_s_ago"), [("dead", 0), ("live", 3600)])
def test_a_dead_or_stale_holders_name_is_free_and_its_job_handed_back(
    name: str, pid: str, seen_s_ago: float
) -> None:
    job_id = held_by(name, dead_pid() if pid == "dead" else os.getppid(), seen_s_ago)
    assert name_in_use(name) is None
    hand_back_at_start(name)
    assert status(job_id) == JobStatus.QUEUED
