import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from sqlalchemy.orm import Session

from core.db import get_sessionmaker
from core.tables import Batch, Job, Schedule


def get_db() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def get_job_or_404(job_id: uuid.UUID, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id}")
    return job


def get_batch_or_404(batch_id: uuid.UUID, session: SessionDep) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no batch with id {batch_id}")
    return batch


def get_schedule_or_404(schedule_id: uuid.UUID, session: SessionDep) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule with id {schedule_id}")
    return schedule


JobDep = Annotated[Job, Depends(get_job_or_404)]
BatchDep = Annotated[Batch, Depends(get_batch_or_404)]
ScheduleDep = Annotated[Schedule, Depends(get_schedule_or_404)]
