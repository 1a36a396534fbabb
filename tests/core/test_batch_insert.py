"""Writing a batch's jobs (core/batches.py `insert_jobs`): a COPY on Postgres, an executemany INSERT on
SQLite; both store what SQLAlchemy's INSERT of the same rows stores, byte for byte."""

import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Text, cast, delete, insert, select
from sqlalchemy.orm import Session

from core.batches import insert_batch, insert_jobs
from core.tables import Batch, Job, JobStatus, utcnow
from tests.utils.db import session_on

OWNER = "batch-insert-test"
# What COPY's text format must escape, and what JSON must keep: tabs, newlines, backslashes, quotes,
# non-ASCII text and characters outside the BMP.
PROMPT = 'a tab\there, a newline\nthere, a backslash \\N, "quotes", ünïcödé, 🐿️'


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    with session_on(request, tmp_path) as session:
        yield session
        session.rollback()
        session.execute(delete(Job).where(Job.owner == OWNER))
        session.execute(delete(Batch).where(Batch.owner == OWNER))
        session.commit()


def rows(batch_id: uuid.UUID, now: datetime) -> list[dict[str, Any]]:
    """Two jobs' rows as `insert_batch` builds them: a fused text2img job, and a training job with a
    webhook, a priority and a queue of its own."""
    common = {"status": JobStatus.QUEUED.value, "outputs": [], "attempts": 0, "created_at": now}
    return [
        common
        | {
            "id": uuid.uuid4(),
            "type": "text2img",
            "model": "tiny-sd",
            "params": {
                "prompt": PROMPT,
                "seed": 1,
                "guidance_scale": 7.5,
                "lora": {"name": "l", "scale": 0.5},
            },
            "output_model": None,
            "overwrite_output_model": False,
            "webhook": None,
            "queue": "diffq",
            "fuse_key": "f" * 64,
            "priority": 0,
            "updated_at": now,
            "batch_id": batch_id,
            "batch_index": 0,
            "owner": OWNER,
        },
        common
        | {
            "id": uuid.uuid4(),
            "type": "train_lora",
            "model": "tiny-sd",
            "params": {"dataset": "builtin:glyphs", "steps": 10, "validation_prompt": None},
            "output_model": "my-lora",
            "overwrite_output_model": True,
            "webhook": {"url": "https://example.com/hook", "events": ["completed"]},
            "queue": "diffq-train",
            "fuse_key": None,
            "priority": -3,
            "updated_at": now,
            "batch_id": batch_id,
            "batch_index": 1,
            "owner": OWNER,
        },
    ]


def stored(session: Session, batch_id: uuid.UUID, ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    """Every column but the id of the jobs `ids`, as the database's text, in batch order."""
    columns = [cast(column, Text) for column in Job.__table__.c if column.name != "id"]
    query = select(*columns).where(Job.batch_id == batch_id, Job.id.in_(ids)).order_by(Job.batch_index)
    return [tuple(row) for row in session.execute(query)]


def test_insert_jobs_stores_what_an_insert_of_the_rows_stores(session: Session) -> None:
    batch_id, none = insert_batch(session, "insert test", {"source": "jobs"}, [], OWNER)
    assert none == []
    now = utcnow()
    written, reference = rows(batch_id, now), rows(batch_id, now)
    insert_jobs(session, written)
    session.execute(insert(Job), reference)
    session.commit()

    written_ids, reference_ids = [row["id"] for row in written], [row["id"] for row in reference]
    assert stored(session, batch_id, written_ids) == stored(session, batch_id, reference_ids)
    jobs = session.scalars(select(Job).where(Job.id.in_(written_ids)).order_by(Job.batch_index)).all()
    assert [job.params for job in jobs] == [row["params"] for row in written]
    assert [job.webhook for job in jobs] == [None, written[1]["webhook"]]
    assert [(job.output_model, job.overwrite_output_model, job.priority) for job in jobs] == [
        (None, False, 0),
        ("my-lora", True, -3),
    ]
    assert all(job.created_at == now and job.status == "queued" for job in jobs)


def test_insert_batch_numbers_its_jobs_and_fills_in_their_defaults(session: Session) -> None:
    jobs = [
        {"type": "text2img", "model": "tiny-sd", "params": {"prompt": PROMPT, "seed": seed}}
        for seed in range(3)
    ]
    batch_id, ids = insert_batch(session, None, {"source": "jobs"}, jobs, OWNER, priority=4)
    session.commit()
    written = session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.batch_index)).all()
    assert [job.id for job in written] == ids
    assert [(job.batch_index, job.params["seed"], job.priority) for job in written] == [
        (i, i, 4) for i in range(3)
    ]
    assert {(job.queue, job.status, job.owner, job.attempts) for job in written} == {
        ("diffq-test", "queued", OWNER, 0)
    }
    assert all(job.outputs == [] and job.webhook is None for job in written)
