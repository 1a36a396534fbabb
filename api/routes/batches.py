"""Bulk submission: many jobs in one request, written in one transaction, followed as one batch."""

import csv
import io
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.admission import Admission, job_values, unprocessable
from api.deps import BatchDep, SessionDep
from api.forms import multipart_body, read_upload
from api.schemas import BatchCreate, BatchPublic
from core.batches import (
    BatchState,
    batch_jobs,
    batch_state,
    expand_sweep,
    insert_batch,
    parse_jsonl,
    sweep_size,
)
from core.config import get_settings
from core.db import db_session, get_sessionmaker
from core.jobs import cancel_jobs
from core.queue import enqueue_jobs
from core.specs import JOB_SPEC, JobSpec
from core.storage import get_storage
from core.tables import Batch, Job, JobStatus, utcnow

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/batches", tags=["batches"])

# Enough errors to see the pattern without a megabyte of JSON for a bad 10,000-job batch.
MAX_ERRORS = 50

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

_JSONL_BODY = multipart_body(
    type={"type": "string", "description": "Job type of the lines that name none (text2img)."},
    model={"type": "string", "description": "Model of the lines that name none."},
    name={"type": "string", "description": "A name for the batch."},
)


def _cap(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(errors) <= MAX_ERRORS:
        return errors
    more = {"loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS} more errors", "type": "too_many_errors"}
    return [*errors[:MAX_ERRORS], more]


def _too_many(count: int) -> HTTPException:
    limit = get_settings().max_batch_jobs
    return unprocessable(
        [
            {
                "loc": ["body"],
                "msg": f"the batch has {count} jobs; the limit is {limit} (DIFFQ_MAX_BATCH_JOBS); split it",
                "type": "too_many_jobs",
            }
        ]
    )


def validate_specs(raw: list[tuple[list[str | int], Any]]) -> tuple[list[JobSpec], list[dict[str, Any]]]:
    """Job specs from raw dicts, each with the location its errors are reported under."""
    specs, errors = [], []
    for loc, value in raw:
        try:
            specs.append(JOB_SPEC.validate_python(value))
        except ValidationError as error:
            errors += [
                {"loc": [*loc, *detail["loc"]], "msg": detail["msg"], "type": detail["type"]}
                for detail in error.errors(include_url=False, include_context=False, include_input=False)
            ]
    return specs, errors


def write_batch(
    session: Session,
    name: str | None,
    source: dict[str, Any],
    specs: list[JobSpec],
    loc_of: Callable[[int], list[str | int]],
    background: BackgroundTasks,
    base_url: str,
) -> BatchPublic:
    """Check, write and schedule the enqueueing of a batch's jobs; 422 if any job is not admitted."""
    if len(specs) > get_settings().max_batch_jobs:
        raise _too_many(len(specs))
    admission = Admission(session, get_storage())
    errors = [error for index, spec in enumerate(specs) for error in admission.problems(spec, loc_of(index))]
    if errors:
        raise unprocessable(_cap(errors))
    batch_id, job_ids = insert_batch(session, name, source, [job_values(spec) for spec in specs])
    session.commit()
    # Sending a message per job takes about a millisecond each: after the response, so that accepting
    # the batch does not wait on it. Queued rows are the source of truth; a job whose message is lost
    # (the API stopping halfway) stays queued until it is sent again.
    background.add_task(_enqueue, batch_id, job_ids)
    batch = session.get_one(Batch, batch_id)
    counts = dict.fromkeys(JobStatus.ALL, 0) | {JobStatus.QUEUED: len(job_ids)}
    return BatchPublic.from_batch(batch, BatchState(total=len(job_ids), counts=counts), base_url)


def _enqueue(batch_id: uuid.UUID, job_ids: list[uuid.UUID]) -> None:
    try:
        with db_session() as session:
            enqueue_jobs(session, job_ids)
    except Exception:
        logger.exception("could not enqueue all %d jobs of batch %s", len(job_ids), batch_id)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchPublic,
    openapi_extra={"requestBody": {"content": {"application/json": {"example": EXAMPLE}}}},
)
def create_batch(
    body: BatchCreate, session: SessionDep, request: Request, background: BackgroundTasks
) -> BatchPublic:
    """Submit many jobs: a list of job specs, or a template and a sweep expanded into their product."""
    if body.jobs is not None:
        specs = body.jobs
        source: dict[str, Any] = {"source": "jobs"}

        def loc_of(index: int) -> list[str | int]:
            return ["body", "jobs", index]
    else:
        assert body.template is not None and body.sweep is not None
        size = sweep_size(body.sweep)
        if size > get_settings().max_batch_jobs:
            raise _too_many(size)
        template = body.template.model_dump()
        expanded = expand_sweep(template, body.sweep)

        def loc_of(index: int) -> list[str | int]:
            return ["body", "sweep", index]

        specs, errors = validate_specs([(loc_of(i), spec) for i, spec in enumerate(expanded)])
        if errors:
            raise unprocessable(_cap(errors))
        source = {"source": "sweep", "template": template, "sweep": body.sweep}
    return write_batch(session, body.name, source, specs, loc_of, background, str(request.base_url))


@router.post(
    "/jsonl", status_code=status.HTTP_201_CREATED, response_model=BatchPublic, openapi_extra=_JSONL_BODY
)
async def create_batch_from_jsonl(request: Request, background: BackgroundTasks) -> BatchPublic:
    """Submit a JSON Lines file, one job a line (multipart field `file`).

    A line with a "params" key is a job spec, `{"type": ..., "model": ..., "params": {...}}`, whose
    missing type and model come from the form's `type` and `model`; any other line is the params of a
    job of that type and model, e.g. `{"prompt": "a cat", "seed": 1}`.
    """
    data, fields = await read_upload(request)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise unprocessable(
            [{"loc": ["body", "file"], "msg": f"not UTF-8 text: {error}", "type": "bad_jsonl"}]
        ) from None
    defaults = {"type": fields.get("type") or "text2img", "model": fields.get("model")}
    name = fields.get("name") or None
    return await run_in_threadpool(_jsonl_batch, text, defaults, name, background, str(request.base_url))


def _jsonl_batch(
    text: str, defaults: dict[str, Any], name: str | None, background: BackgroundTasks, base_url: str
) -> BatchPublic:
    lines = parse_jsonl(text, defaults)
    if not lines:
        raise unprocessable([{"loc": ["body", "file"], "msg": "the file has no jobs", "type": "bad_jsonl"}])
    if len(lines) > get_settings().max_batch_jobs:
        raise _too_many(len(lines))
    errors = [
        {"loc": ["body", "file", "line", line.number], "msg": line.error, "type": "bad_jsonl"}
        for line in lines
        if line.error
    ]
    specs, spec_errors = validate_specs(
        [(["body", "file", "line", line.number], line.spec) for line in lines if line.spec is not None]
    )
    if errors or spec_errors:
        raise unprocessable(_cap(errors + spec_errors))
    numbers = [line.number for line in lines]
    source = {"source": "jsonl", "defaults": defaults}
    with get_sessionmaker()() as session:
        return write_batch(
            session,
            name,
            source,
            specs,
            lambda index: ["body", "file", "line", numbers[index]],
            background,
            base_url,
        )


@router.get("/{batch_id}", response_model=BatchPublic)
def get_batch(batch: BatchDep, session: SessionDep, request: Request) -> BatchPublic:
    """Counts by status, overall progress, the running jobs and, once all jobs have finished, the
    manifest's links."""
    return BatchPublic.from_batch(batch, batch_state(session, batch), str(request.base_url))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchPublic,
    responses={409: {"description": "Every job of the batch has already finished."}},
)
def cancel_batch(batch: BatchDep, session: SessionDep, request: Request) -> BatchPublic:
    """Cancel every queued and running job of the batch; finished jobs keep their outputs."""
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
    return BatchPublic.from_batch(batch, state, str(request.base_url))


def manifest_entries(session: Session, batch: Batch, base_url: str) -> list[dict[str, Any]]:
    """One entry per job, in batch order, with its parameters and its outputs' URLs."""
    storage = get_storage()
    return [
        {
            "index": job.batch_index,
            "job_id": str(job.id),
            "status": job.status,
            "type": job.type,
            "model": job.model,
            "params": job.params,
            "error": job.error,
            "outputs": [
                output | {"url": storage.url(output["key"], base_url=base_url)}
                for output in job.outputs or []
            ],
        }
        for job in batch_jobs(session, batch.id)
    ]


@router.get("/{batch_id}/manifest.json")
def get_manifest_json(batch: BatchDep, session: SessionDep, request: Request) -> dict[str, Any]:
    """Every job of the batch with its parameters, status, error and outputs (with URLs). Before the
    batch is done (`done` false) it lists the jobs as they are so far."""
    state = batch_state(session, batch, running_limit=0)
    return {
        "batch_id": str(batch.id),
        "name": batch.name,
        "status": state.status,
        "done": state.done,
        "counts": state.counts,
        "jobs": manifest_entries(session, batch, str(request.base_url)),
    }


CSV_COLUMNS = (
    "index",
    "job_id",
    "status",
    "type",
    "model",
    "output",
    "seed",
    "width",
    "height",
    "url",
    "key",
    "prompt",
    "error",
    "params",
)


@router.get("/{batch_id}/manifest.csv", response_class=Response)
def get_manifest_csv(batch: BatchDep, session: SessionDep, request: Request) -> Response:
    """One row per output (its own seed, URL and the job's params as JSON); a job without outputs
    (failed, canceled, not finished) gets one row with its status and error."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for entry in manifest_entries(session, batch, str(request.base_url)):
        error = entry["error"] or {}
        row = {
            "index": entry["index"],
            "job_id": entry["job_id"],
            "status": entry["status"],
            "type": entry["type"],
            "model": entry["model"],
            "prompt": entry["params"].get("prompt", ""),
            "error": f"{error['code']}: {error['message']}" if error else "",
        }
        outputs = entry["outputs"] or [{}]
        for number, output in enumerate(outputs):
            params = entry["params"] | ({"seed": output["seed"]} if output.get("seed") is not None else {})
            writer.writerow(
                row
                | {
                    "output": number if output else "",
                    "seed": output.get("seed", entry["params"].get("seed", "")),
                    "width": output.get("width", ""),
                    "height": output.get("height", ""),
                    "url": output.get("url", ""),
                    "key": output.get("key", ""),
                    "params": json.dumps(params, sort_keys=True),
                }
            )
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="batch-{batch.id}.csv"'},
    )
