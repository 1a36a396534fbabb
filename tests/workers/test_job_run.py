"""Progress totals are the number of timesteps a pipeline really runs, known before it starts."""

import uuid
from collections.abc import Iterator

import pytest

from core.db import db_session
from core.tables import Job, JobStatus
from workers.job_run import JobRun
from workers.pipelines import get_pipeline


@pytest.fixture
def job_run(database, s3) -> Iterator[JobRun]:
    with db_session() as session:
        job = Job(type="text2img", model="tiny-sd", params={}, status=JobStatus.RUNNING)
        session.add(job)
        session.commit()
        yield JobRun.from_job(job, session)


@pytest.mark.parametrize(
    ("task", "scheduler", "steps", "strength", "total"),
    [
        ("text2img", None, 10, None, 11),  # PNDM runs one step more than asked
        ("text2img", "heun", 5, None, 9),  # two model calls a step but the last
        ("text2img", "euler", 10, None, 10),
        ("img2img", None, 10, 0.5, 6),  # the last 6 of PNDM's 11
        ("img2img", "dpmpp_2m", 10, 0.3, 3),
        ("inpaint", "ddim", 10, 1.0, 10),
    ],
)
def test_progress_total_is_known_before_the_run(
    job_run, models_dir, task: str, scheduler: str | None, steps: int, strength: float | None, total: int
) -> None:
    pipe = get_pipeline("tiny-sd", task, scheduler)
    reporter = job_run.start_diffusers_progress(pipe, steps, strength)
    assert reporter.total == total
    with db_session() as session:
        assert session.get_one(Job, job_run.job_id).progress == {
            "step": 0,
            "total": total,
            "fraction": 0.0,
            "eta_s": None,
            "steps_per_s": None,
        }


def test_status_of_an_unknown_job_is_none(database) -> None:
    from core.jobs import job_status

    with db_session() as session:
        assert job_status(session, uuid.uuid4()) is None
