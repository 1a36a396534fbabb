"""A real run of the worker's task, in this process: every step reaches the job's stream, the run ends
it, and Postgres is written (coalesced) but never read for a cancel."""

import asyncio
import re
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import event

from core.db import db_session, get_engine
from core.events import get_event_store, job_stream
from core.tables import Job, JobStatus
from tests.utils.jobs import text2img_spec, write_queued_job


@pytest.fixture
def statements(models_dir, database, broker, s3) -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test does."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append(statement)

    event.listen(get_engine(), "before_cursor_execute", record)
    yield seen
    event.remove(get_engine(), "before_cursor_execute", record)


def queued_job(**params) -> uuid.UUID:
    return write_queued_job(text2img_spec(num_images=1, **params))


def test_a_run_publishes_every_step_and_reads_no_status(statements: list[str]) -> None:
    from workers.tasks import run_job

    job_id = queued_job(num_inference_steps=20)
    statements.clear()
    assert run_job(str(job_id)) == f"job {job_id}: succeeded"

    store = get_event_store()
    events = asyncio.run(store.read(job_stream(job_id), store.start, 0))
    kinds = [e.kind for e in events]
    total = events[1].data["total"]  # tiny-sd's PNDM runs one step more than asked
    assert total in (20, 21) and kinds == ["status"] + ["progress"] * total + ["status"], kinds
    assert [e.data["step"] for e in events[1:-1]] == list(range(1, total + 1))
    assert events[0].data["status"] == "running" and events[-1].data["status"] == "succeeded"
    assert events[-1].data["outputs"][0]["key"] == f"jobs/{job_id}/0.png"

    status_reads = [s for s in statements if re.match(r"SELECT jobs\.status\s+FROM jobs", s)]
    assert status_reads == []
    progress_writes = [s for s in statements if s.startswith("UPDATE jobs SET progress")]
    # Coalesced: the tests write at most every 0.05 s; neither the start nor the last step is written
    # apart (the stream carries every step, and the job's end its last progress).
    assert len(progress_writes) < total
    with db_session() as session:
        job = session.get_one(Job, job_id)
    assert job.progress["step"] == job.progress["total"] == total


def test_a_cancel_stops_the_run_at_the_next_step_through_the_stream(statements: list[str]) -> None:
    """The API's cancel raises the job's flag in Redis; the worker sees it with its next step."""
    from core.events import publish_canceled
    from core.jobs import cancel_job
    from workers.pipelines import get_base_pipeline
    from workers.tasks import run_job

    job_id = queued_job(num_inference_steps=30)
    pipe = get_base_pipeline("tiny-sd", "text2img")
    calls = {"unet": 0}

    def on_unet(module, args, kwargs) -> None:
        calls["unet"] += 1
        if calls["unet"] == 4:
            with db_session() as session:
                assert cancel_job(session, job_id)
                session.commit()
                publish_canceled(session, [job_id])

    hook = pipe.unet.register_forward_pre_hook(on_unet, with_kwargs=True)
    try:
        assert run_job(str(job_id)) == f"job {job_id}: canceled"
    finally:
        hook.remove()
    assert calls["unet"] == 4  # the step the cancel came in finished; no other began
    with db_session() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.CANCELED and job.progress["step"] == 4
    assert not [s for s in statements if re.match(r"SELECT jobs\.status\s+FROM jobs", s)]
