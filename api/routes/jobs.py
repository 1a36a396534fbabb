import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from sqlalchemy import select

from api.deps import SessionDep
from api.schemas import JobPublic, JobsPublic, MetricPublic, MetricsPublic
from core.config import get_settings
from core.jobs import job_metrics
from core.models import Job, JobStatus
from core.queue import enqueue_job
from core.specs import JobSpec
from core.storage import get_storage
from core.submit import Problem, job_from_spec, spec_problems

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EXAMPLE = {
    "type": "text2img",
    "model": "tiny-sd",
    "params": {"prompt": "a squirrel in Picasso style", "num_inference_steps": 20, "seed": 1234},
}


def public(job: Job, request: Request) -> JobPublic:
    return JobPublic.from_job(job, get_storage(), str(request.base_url))


def check_spec(spec: JobSpec, loc: tuple[str, ...] = ("body",)) -> None:
    """422 for what the spec's own validation can't see: unknown models, taken names, datasets."""
    raise_problems(spec_problems(spec, get_settings().models_dir, get_storage()), loc)


def raise_problems(problems: list[Problem], loc: tuple[str, ...]) -> None:
    if problems:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": [*loc, *where], "msg": msg, "type": kind} for where, msg, kind in problems],
        )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    spec: Annotated[JobSpec, Body(examples=[EXAMPLE])], session: SessionDep, request: Request
) -> JobPublic:
    check_spec(spec)
    job = job_from_spec(spec)  # a seed left unset is picked and recorded, so the job can be remade
    session.add(job)
    session.commit()
    try:
        enqueue_job(job.id, job.type)
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


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
def get_job_metrics(
    job_id: uuid.UUID,
    session: SessionDep,
    after_step: Annotated[int, Query(ge=0, description="Only the steps after this one.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsPublic:
    """A training job's loss history: `step`, `epoch`, `loss`, `lr` of each optimizer step."""
    if session.get(Job, job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id}")
    metrics = [MetricPublic.from_metric(m) for m in job_metrics(job_id, after_step=after_step, limit=limit)]
    return MetricsPublic(job_id=job_id, data=metrics, count=len(metrics))


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    request: Request,
    status_: Annotated[
        str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    schedule_id: Annotated[uuid.UUID | None, Query(description="Only the jobs this schedule made.")] = None,
) -> JobsPublic:
    query = select(Job).order_by(Job.created_at.desc()).limit(limit).offset(offset)
    if status_:
        query = query.where(Job.status == status_)
    if schedule_id:
        query = query.where(Job.schedule_id == schedule_id)
    jobs = session.scalars(query).all()
    return JobsPublic(data=[public(job, request) for job in jobs], count=len(jobs))
