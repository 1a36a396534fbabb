import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from sqlalchemy import select

from api.admission import Admission, job_values, too_many, unprocessable
from api.auth import READ, SUBMIT, Reader, Submitter, owner_filter
from api.deps import JobDep, SessionDep
from api.schemas import JobPublic, JobsPublic, MetricPublic, MetricsPublic, WebhookDeliveriesPublic
from core.events import publish_canceled
from core.job_types import JobType
from core.jobs import cancel_job, job_metrics
from core.queue import Waiting, wake_workers
from core.quotas import QuotaExceeded, check_queued_jobs
from core.specs import JobSpec
from core.storage import get_storage
from core.tables import INT32_MAX, INT64_MAX, Job, JobStatus, WebhookDelivery
from core.webhooks import deliveries

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
    spec: Annotated[JobSpec, Body(examples=[EXAMPLE])],
    session: SessionDep,
    request: Request,
    principal: Submitter,
) -> JobPublic:
    errors = Admission(session, get_storage(), principal).problems(spec, ["body"])
    if errors:
        raise unprocessable(errors)
    try:
        check_queued_jobs(session, principal, 1)
    except QuotaExceeded as error:
        raise too_many(error, ["body"]) from None
    job = Job(**job_values(spec, principal.owner), status=JobStatus.QUEUED)
    session.add(job)
    session.commit()
    try:
        wake_workers(session, [Waiting(job.id, job.queue, job.type, job.model)])
    except Exception:
        # The row is the queue: an idle worker finds the job at its next poll.
        logger.exception("could not wake a worker for job %s; an idle one will find it", job.id)
    return public(job, request)


@router.get("/{job_id}", response_model=JobPublic, dependencies=READ)
def get_job(job: JobDep, request: Request) -> JobPublic:
    return public(job, request)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    dependencies=SUBMIT,
    responses={409: {"description": "The job has already finished."}},
)
def cancel(job: JobDep, session: SessionDep, request: Request) -> JobPublic:
    """Cancel a job. A queued job never runs; a running one stops at its next step and stores nothing."""
    was_running = job.status == JobStatus.RUNNING
    canceled = cancel_job(session, job.id)
    session.commit()
    if canceled and was_running:
        publish_canceled(session, [job.id])
    session.refresh(job)
    if not canceled:
        when = f", finished at {job.finished_at.isoformat(timespec='seconds')}" if job.finished_at else ""
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job.id} is {job.status}{when}; only queued or running jobs can be canceled",
        )
    return public(job, request)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, dependencies=READ)
def get_job_metrics(
    job: JobDep,
    session: SessionDep,
    after_step: Annotated[
        int, Query(ge=0, le=INT32_MAX, description="Only the steps after this one (a 32-bit step number).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsPublic:
    """A training job's loss history: `step`, `epoch`, `loss`, `lr` of each optimizer step."""
    rows = job_metrics(session, job.id, after_step=after_step, limit=limit)
    metrics = [MetricPublic.model_validate(m) for m in rows]
    return MetricsPublic(job_id=job.id, data=metrics, count=len(metrics))


@router.get("/{job_id}/webhooks", response_model=WebhookDeliveriesPublic, dependencies=READ)
def get_job_webhooks(job: JobDep, session: SessionDep) -> WebhookDeliveriesPublic:
    """The job's webhook deliveries, oldest first, each with its attempts and the receiver's answers."""
    return WebhookDeliveriesPublic.of(deliveries(session, WebhookDelivery.job_id == job.id))


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    request: Request,
    principal: Reader,
    status_: Annotated[
        str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")
    ] = None,
    batch_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    schedule_id: Annotated[uuid.UUID | None, Query(description="Only the jobs this schedule made.")] = None,
    type_: Annotated[JobType | None, Query(alias="type", description="Only jobs of this type.")] = None,
    owner: Annotated[
        str | None,
        Query(max_length=100, description="Only this owner's jobs (admin keys; others see only their own)."),
    ] = None,
) -> JobsPublic:
    """The jobs of the key's owner, newest first (an admin key sees every owner's)."""
    query = select(Job).limit(limit).offset(offset).where(*owner_filter(principal, owner, Job.owner, "jobs"))
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
