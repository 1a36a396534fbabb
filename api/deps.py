"""The objects a route acts on, found by id for the request's principal: another owner's answers 404,
exactly as one that does not exist, so that ids leak nothing (core/auth.py)."""

import uuid
from typing import Annotated

from fastapi import Depends, HTTPException, status

from api.auth import PrincipalDep
from api.session import SessionDep, get_db
from core.tables import Batch, Job, Schedule

__all__ = ["BatchDep", "JobDep", "ScheduleDep", "SessionDep", "get_db"]


def get_job_or_404(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> Job:
    job = session.get(Job, job_id)
    if job is None or not principal.may_see(job.owner):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id}")
    return job


def get_batch_or_404(batch_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None or not principal.may_see(batch.owner):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no batch with id {batch_id}")
    return batch


def get_schedule_or_404(schedule_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None or not principal.may_see(schedule.owner):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule with id {schedule_id}")
    return schedule


JobDep = Annotated[Job, Depends(get_job_or_404)]
BatchDep = Annotated[Batch, Depends(get_batch_or_404)]
ScheduleDep = Annotated[Schedule, Depends(get_schedule_or_404)]
