"""Bulk submission: many jobs in one request, written in one transaction, followed as one batch."""

import json
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Form, HTTPException, Query, Request, Response, status
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.admission import Admission, job_values, too_many, unprocessable
from api.auth import READ, SUBMIT, Reader, Submitter, owner_filter
from api.deps import BatchDep, SessionDep
from api.routes.uploads import REQUIRED_BODY, FileField, read_upload, refuse_unknown_fields
from api.schemas import BatchCreate, BatchesPublic, BatchPublic, WebhookDeliveriesPublic
from core.auth import Principal
from core.batch_specs import (
    BatchInvalid,
    BatchSpecs,
    cap_errors,
    specs_from_jobs,
    specs_from_jsonl,
    specs_from_sweep,
)
from core.batches import BatchState, batch_state, insert_batch, manifest, manifest_csv, manifest_entries
from core.db import db_session, get_sessionmaker
from core.events import publish_batch_canceled
from core.jobs import cancel_jobs
from core.queue import Waiting, wake_workers
from core.quotas import QuotaExceeded, check_batch_jobs, check_queued_jobs
from core.specs import PRIORITY_LIMIT, BatchWebhook
from core.storage import get_storage
from core.tables import INT64_MAX, Batch, Job, JobStatus, WebhookDelivery, utcnow
from core.webhooks import deliveries

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/batches", tags=["batches"])

EXAMPLE = {
    "name": "squirrels",
    "template": {
        "type": "text2img",
        "model": "tiny-sd",
        "params": {"num_inference_steps": 20, "width": 64, "height": 64},
    },
    "sweep": {
        "prompt": ["a squirrel in Picasso style", "a squirrel in Monet style"],
        "seed": [1, 2, 3],
        "scheduler": ["euler_a", "dpmpp_2m_karras"],
    },
}


def public(batch: Batch, state: BatchState, base_url: str) -> BatchPublic:
    return BatchPublic.model_validate(batch, context={"state": state, "base_url": base_url})


def write_batch(
    session: Session,
    name: str | None,
    batch: BatchSpecs,
    background: BackgroundTasks,
    base_url: str,
    principal: Principal,
    webhook: BatchWebhook | None = None,
    priority: int = 0,
) -> BatchPublic:
    """Admit and write `principal`'s batch, and wake workers for it after the response; 422 if any job
    is not admitted, 429 past the owner's quotas. Its jobs without a priority of their own take the
    batch's `priority`."""
    try:
        check_batch_jobs(principal, len(batch.specs))
    except QuotaExceeded as error:
        raise too_many(error, ["body"]) from None
    admission = Admission(session, get_storage(), principal)
    errors = admission.webhook_problems(webhook.url, ["body", "webhook", "url"]) if webhook else []
    errors += admission.priority_problems(priority, ["body", "priority"])
    errors += [
        error
        for spec, loc in zip(batch.specs, batch.locs, strict=True)
        for error in admission.problems(spec, loc)
    ]
    if errors:
        raise unprocessable(cap_errors(errors))
    try:
        check_queued_jobs(session, principal, len(batch.specs))
    except QuotaExceeded as error:
        raise too_many(error, ["body"]) from None
    values = [job_values(spec, principal.owner, priority, admission.memo) for spec in batch.specs]
    batch_id, job_ids = insert_batch(session, name, batch.source, values, principal.owner, webhook, priority)
    session.commit()
    # A few wake-ups (one per live worker at most), sent after the response so that a broker that is
    # down never holds the submitter up. The rows are the queue: a lost wake-up only delays the jobs
    # until a worker's idle poll.
    waiting = [
        Waiting(job_id, v["queue"], v["type"], v["model"]) for job_id, v in zip(job_ids, values, strict=True)
    ]
    background.add_task(_wake, batch_id, waiting)
    counts = dict.fromkeys(JobStatus.ALL, 0) | {JobStatus.QUEUED: len(job_ids)}
    state = BatchState(total=len(job_ids), counts=counts)
    return public(session.get_one(Batch, batch_id), state, base_url)


def _wake(batch_id: uuid.UUID, waiting: list[Waiting]) -> None:
    try:
        with db_session() as session:
            wake_workers(session, waiting)
    except Exception:
        logger.exception("could not wake workers for batch %s; idle workers will find its jobs", batch_id)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchPublic,
    openapi_extra={"requestBody": {"content": {"application/json": {"example": EXAMPLE}}}},
)
def create_batch(
    body: BatchCreate,
    session: SessionDep,
    request: Request,
    background: BackgroundTasks,
    principal: Submitter,
) -> BatchPublic:
    """Submit many jobs: a list of job specs, or a template and a sweep expanded into their product."""
    try:
        if body.jobs is not None:
            batch = specs_from_jobs(body.jobs)
        else:
            assert body.template is not None and body.sweep is not None
            batch = specs_from_sweep(body.template.model_dump(), body.sweep)
    except BatchInvalid as error:
        raise unprocessable(error.errors) from None
    return write_batch(
        session, body.name, batch, background, str(request.base_url), principal, body.webhook, body.priority
    )


# The multipart fields of POST /v1/batches/jsonl.
JSONL_FIELDS = ("file", "type", "model", "name", "webhook", "priority")


@router.post(
    "/jsonl", status_code=status.HTTP_201_CREATED, response_model=BatchPublic, openapi_extra=REQUIRED_BODY
)
async def create_batch_from_jsonl(
    request: Request,
    background: BackgroundTasks,
    principal: Submitter,
    file: FileField = None,
    type_: Annotated[
        str | None, Form(alias="type", description="Job type of the lines that name none (text2img).")
    ] = None,
    model: Annotated[str | None, Form(description="Model of the lines that name none.")] = None,
    name: Annotated[str | None, Form(description="A name for the batch.")] = None,
    webhook: Annotated[
        str | None,
        Form(description='The batch\'s webhook as JSON: {"url": ..., "events": ["completed", ...]}.'),
    ] = None,
    priority: Annotated[
        int,
        Form(ge=-PRIORITY_LIMIT, le=PRIORITY_LIMIT, description="The batch's priority; higher runs first."),
    ] = 0,
) -> BatchPublic:
    """Submit a JSON Lines file, one job a line (multipart field `file`).

    A line with a "params" key is a job spec, `{"type": ..., "model": ..., "params": {...}}`, whose
    missing type and model come from the form's `type` and `model`; any other line is the params of a
    job of that type and model, e.g. `{"prompt": "a cat", "seed": 1}`. Any other form field is a 422.
    """
    data = await read_upload(request, file)
    await refuse_unknown_fields(request, JSONL_FIELDS)
    batch_webhook = _form_webhook(webhook) if webhook else None
    return await run_in_threadpool(
        _jsonl_batch,
        data,
        type_ or None,
        model or None,
        name or None,
        background,
        str(request.base_url),
        principal,
        batch_webhook,
        priority,
    )


def _form_webhook(text: str) -> BatchWebhook:
    """The `webhook` form field, or a 422 located at it."""
    if not text.lstrip().startswith("{"):
        raise unprocessable(
            [
                {
                    "loc": ["body", "webhook"],
                    "msg": f'the webhook field holds JSON: {{"url": {json.dumps(text[:200])}}}, and "events"',
                    "type": "json_invalid",
                }
            ]
        )
    try:
        return BatchWebhook.model_validate_json(text)
    except ValidationError as error:
        raise unprocessable(
            [
                {"loc": ["body", "webhook", *detail["loc"]], "msg": detail["msg"], "type": detail["type"]}
                for detail in error.errors(include_url=False, include_context=False, include_input=False)
            ]
        ) from None


def _jsonl_batch(
    data: bytes,
    type_: str | None,
    model: str | None,
    name: str | None,
    background: BackgroundTasks,
    base_url: str,
    principal: Principal,
    webhook: BatchWebhook | None,
    priority: int = 0,
) -> BatchPublic:
    try:
        batch = specs_from_jsonl(data, type_, model)
    except BatchInvalid as error:
        raise unprocessable(error.errors) from None
    with get_sessionmaker()() as session:
        return write_batch(session, name, batch, background, base_url, principal, webhook, priority)


@router.get("", response_model=BatchesPublic)
def list_batches(
    session: SessionDep,
    request: Request,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    owner: Annotated[
        str | None,
        Query(
            max_length=100, description="Only this owner's batches (admin keys; others see only their own)."
        ),
    ] = None,
) -> BatchesPublic:
    """The batches of the key's owner, newest first (an admin key sees every owner's), each with its
    counts by status and progress, as `GET /v1/batches/{id}` shows it without its running jobs."""
    query = (
        select(Batch)
        .where(*owner_filter(principal, owner, Batch.owner, "batches"))
        .order_by(Batch.created_at.desc())
        .limit(limit)
        .offset(offset)
    )
    base_url = str(request.base_url)
    batches = [
        public(batch, batch_state(session, batch, running_limit=0), base_url)
        for batch in session.scalars(query)
    ]
    return BatchesPublic(data=batches, count=len(batches))


@router.get("/{batch_id}", response_model=BatchPublic, dependencies=READ)
def get_batch(batch: BatchDep, session: SessionDep, request: Request) -> BatchPublic:
    """Counts by status, overall progress, the running jobs and, once all jobs have finished, the
    manifest's links."""
    return public(batch, batch_state(session, batch), str(request.base_url))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchPublic,
    dependencies=SUBMIT,
    responses={409: {"description": "Every job of the batch has already finished."}},
)
def cancel_batch(batch: BatchDep, session: SessionDep, request: Request) -> BatchPublic:
    """Cancel every queued and running job of the batch; finished jobs keep their outputs."""
    running = list(
        session.scalars(select(Job.id).where(Job.batch_id == batch.id, Job.status == JobStatus.RUNNING))
    )
    canceled = cancel_jobs(session, Job.batch_id == batch.id)
    state = batch_state(session, batch)
    if not canceled:
        counts = ", ".join(f"{count} {name}" for name, count in state.counts.items() if count)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"batch {batch.id} has finished ({counts}); there is nothing left to cancel",
        )
    batch.canceled_at = utcnow()
    session.commit()
    publish_batch_canceled(session, batch.id, running, canceled)
    return public(batch, state, str(request.base_url))


@router.get("/{batch_id}/webhooks", response_model=WebhookDeliveriesPublic, dependencies=READ)
def get_batch_webhooks(batch: BatchDep, session: SessionDep) -> WebhookDeliveriesPublic:
    """The batch's own webhook deliveries (its `completed` event), each with its attempts and the
    receiver's answers; its jobs' deliveries are under `GET /v1/jobs/{id}/webhooks`."""
    return WebhookDeliveriesPublic.of(deliveries(session, WebhookDelivery.batch_id == batch.id))


@router.get("/{batch_id}/manifest.json", dependencies=READ)
def get_manifest_json(batch: BatchDep, session: SessionDep, request: Request) -> dict[str, Any]:
    """Every job of the batch with its parameters, status, error and outputs (with URLs). Before the
    batch is done (`done` false) it lists the jobs as they are so far."""
    return manifest(session, batch, get_storage(), str(request.base_url))


@router.get("/{batch_id}/manifest.csv", response_class=Response, dependencies=READ)
def get_manifest_csv(batch: BatchDep, session: SessionDep, request: Request) -> Response:
    """One row per output (its own seed, URL and the job's params as JSON); a job without outputs
    (failed, canceled, not finished) gets one row with its status and error."""
    entries = manifest_entries(session, batch, get_storage(), str(request.base_url))
    return Response(
        manifest_csv(entries),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="batch-{batch.id}.csv"'},
    )
