"""The finisher (workers/finisher.py) in this process: a call's images are stored and its jobs recorded
after the task's part returns, fused calls included, and an upload that fails fails its job."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import db_session
from core.storage import LocalStorage, get_storage
from core.tables import Job, JobStatus
from tests.workers.test_fusion import SPECS, params, running_jobs
from workers.finisher import FINISHER
from workers.fusion import run_jobs


@pytest.fixture
def session(database, s3, models_dir) -> Iterator:
    with db_session() as session:
        yield session


def stored_job(job_id) -> Job:
    with db_session() as session:
        return session.get_one(Job, job_id)


def test_a_fused_calls_images_are_stored_then_each_job_recorded(session) -> None:
    from workers.tasks import _finish

    runs = running_jobs(session, SPECS)
    for run in runs:
        run.defer_outputs = True
    outcomes = run_jobs(runs)
    # Denoised and decoded, nothing stored or recorded yet.
    assert all(run.pending is not None for run in runs)
    for run in runs:
        assert stored_job(run.job_id).status == JobStatus.RUNNING
        assert get_storage().list(f"jobs/{run.job_id}/") == []

    FINISHER.finish(lambda: _finish(runs, outcomes, busy_seconds=0.1))
    FINISHER.drain()
    for run, spec in zip(runs, SPECS, strict=True):
        job = stored_job(run.job_id)
        keys = [f"jobs/{run.job_id}/{index}.png" for index in range(spec["num_images"])]
        assert job.status == JobStatus.SUCCEEDED
        assert [output["key"] for output in job.outputs] == keys
        assert get_storage().list(f"jobs/{run.job_id}/") == keys
        assert run.pending is None


def test_an_upload_that_fails_fails_its_job_with_the_error(session, tmp_path: Path) -> None:
    from workers.tasks import _finish

    [run] = running_jobs(session, [params("a red square", 7)])
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    run.storage = LocalStorage(not_a_folder, "http://127.0.0.1")  # every put fails: NotADirectoryError
    run.defer_outputs = True
    outcomes = run_jobs([run])

    FINISHER.finish(lambda: _finish([run], outcomes, busy_seconds=0.1))
    FINISHER.drain()
    job = stored_job(run.job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error["code"] == "internal"
    assert "NotADirectoryError" in job.error["message"]
