import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from sqlalchemy import select

from api.admission import Admission, job_values, unprocessable
from api.deps import JobDep, SessionDep
from api.schemas import JobPublic, JobsPublic, MetricPublic, MetricsPublic
from core.job_types import JobType
from core.jobs import cancel_job, job_metrics
from core.queue import Waiting, wake_workers
from core.specs import JobSpec
from core.storage import get_storage
from core.tables import Job, JobStatus

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EXAMPLE = {
    "type": "text2img",
    "model": "tiny-sd",
    "params": {"prompt": "a squirrel in Picasso style", "num_inference_steps": 20, "seed": 1234},
}


def public(job: Job, request: Request) -> JobPublic:
    return JobPublic.model_validate(
        job, context={"storage": get_storage(), "base_url": str(request.base_url)}
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    spec: Annotated[JobSpec, Body(examples=[EXAMPLE])], session: SessionDep, request: Request
) -> JobPublic:
    errors = Admission(session, get_storage()).problems(spec, ["body"])
    if errors:
        raise unprocessable(errors)
    job = Job(**job_values(spec), status=JobStatus.QUEUED)
    session.add(job)
    session.commit()
    try:
        wake_workers(session, [Waiting(job.id, job.queue, job.type, job.model)])
    except Exception:
        # The row is the queue: an idle worker finds the job at its next poll.
        logger.exception("could not wake a worker for job %s; an idle one will find it", job.id)
    return public(job, request)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job: JobDep, request: Request) -> JobPublic:
    return public(job, request)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={409: {"description": "The job has already finished."}},
)
def cancel(job: JobDep, session: SessionDep, request: Request) -> JobPublic:
    """Cancel a job. A queued job never runs; a running one stops at its next step and stores nothing."""
    canceled = cancel_job(session, job.id)
    session.commit()
    session.refresh(job)
    if not canceled:
        when = f", finished at {job.finished_at.isoformat(timespec='seconds')}" if job.finished_at else ""
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job.id} is {job.status}{when}; only queued or running jobs can be canceled",
        )
    return public(job, request)


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
def get_job_metrics(
    job: JobDep,
    session: SessionDep,
    after_step: Annotated[int, Query(ge=0, description="Only the steps after this one.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsPublic:
    """A training job's loss history: `step`, `epoch`, `loss`, `lr` of each optimizer step."""
    rows = job_metrics(session, job.id, after_step=after_step, limit=limit)
    metrics = [MetricPublic.model_validate(m) for m in rows]
    return MetricsPublic(job_id=job.id, data=metrics, count=len(metrics))


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    request: Request,
    status_: Annotated[
        str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")
    ] = None,
    batch_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    schedule_id: Annotated[uuid.UUID | None, Query(description="Only the jobs this schedule made.")] = None,
    type_: Annotated[JobType | None, Query(alias="type", description="Only jobs of this type.")] = None,
) -> JobsPublic:
    query = select(Job).limit(limit).offset(offset)
    if status_:
        query = query.where(Job.status == status_)
    if type_:
        query = query.where(Job.type == type_)
    if schedule_id:
        query = query.where(Job.schedule_id == schedule_id)
    if batch_id:
        query = query.where(Job.batch_id == batch_id).order_by(Job.batch_index)
    else:
        query = query.order_by(Job.created_at.desc())
    jobs = session.scalars(query).all()
    return JobsPublic(data=[public(job, request) for job in jobs], count=len(jobs))
