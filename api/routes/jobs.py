import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from sqlalchemy import select

from api.deps import SessionDep
from api.schemas import JobPublic, JobsPublic
from core.config import get_settings
from core.model_refs import reference_problem
from core.models import Job, JobStatus
from core.queue import enqueue_job
from core.specs import JobSpec, new_seed
from core.storage import get_storage

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EXAMPLE = {
    "type": "text2img",
    "model": "tiny-sd",
    "params": {"prompt": "a squirrel in Picasso style", "num_inference_steps": 20, "seed": 1234},
}


def public(job: Job, request: Request) -> JobPublic:
    return JobPublic.from_job(job, get_storage(), str(request.base_url))


def check_model(ref: str) -> None:
    problem = reference_problem(ref, get_settings().models_dir)
    if problem:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body", "model"], "msg": problem, "type": "unknown_model"}],
        )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    spec: Annotated[JobSpec, Body(examples=[EXAMPLE])], session: SessionDep, request: Request
) -> JobPublic:
    check_model(spec.model)
    params = spec.params.model_dump(mode="json")
    if "seed" in params and params["seed"] is None:
        params["seed"] = new_seed()  # recorded, so the job can be remade
    job = Job(type=spec.type, model=spec.model, params=params, status=JobStatus.QUEUED)
    session.add(job)
    session.commit()
    try:
        enqueue_job(job.id, job.type, job.model)
    except Exception:
        # The row is the source of truth; a job that never reached the broker is requeued later.
        logger.exception("could not enqueue job %s", job.id)
    return public(job, request)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: uuid.UUID, session: SessionDep, request: Request) -> JobPublic:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id}")
    return public(job, request)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    request: Request,
    status_: Annotated[
        str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    query = select(Job).order_by(Job.created_at.desc()).limit(limit).offset(offset)
    if status_:
        query = query.where(Job.status == status_)
    jobs = session.scalars(query).all()
    return JobsPublic(data=[public(job, request) for job in jobs], count=len(jobs))
