"""Scheduled jobs: a job template and a cron expression or a single `run_at`; `diffq beat` fires them."""

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.admission import Admission, unprocessable
from api.auth import READ, SUBMIT, Reader, Submitter
from api.deps import ScheduleDep, SessionDep
from api.schemas import SchedulePublic, SchedulesPublic, ScheduleUpdate
from core.auth import Principal
from core.schedules import ScheduleSpec, next_cron_time
from core.storage import get_storage
from core.tables import Schedule, utcnow

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

EXAMPLE = {
    "name": "nightly glyphs",
    "cron": "0 3 * * *",
    "timezone": "UTC",
    "job": {
        "type": "train_unconditional",
        "output_model": "glyphs-ddpm",
        "overwrite_output_model": True,
        "params": {"dataset": "builtin:glyphs", "image_size": 32, "num_epochs": 20},
    },
}


def _apply(session: Session, schedule: Schedule, spec: ScheduleSpec, principal: Principal) -> None:
    """Write `spec` into the row and work out its next due time.

    A cron schedule is due next at the first match from now. A single run keeps its state while
    its `run_at` stays the same (a fired one does not fire again; a paused one that missed its time
    fires once enabled); a new `run_at` must lie ahead.
    """
    now = utcnow()
    if errors := Admission(session, get_storage(), principal).problems(spec.job, ["body", "job"]):
        raise unprocessable(errors)
    same_run_at = schedule.run_at is not None and spec.run_at is not None and schedule.run_at == spec.run_at
    if spec.run_at is not None and not same_run_at and spec.run_at < now:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["body", "run_at"],
                    "msg": f"run_at {spec.run_at.isoformat()} is in the past (now is {now.isoformat()})",
                    "type": "past",
                }
            ],
        )
    if spec.cron is not None:
        schedule.next_run_at = next_cron_time(spec.cron, spec.timezone, now)
    elif not same_run_at:
        schedule.next_run_at = spec.run_at
    schedule.name = spec.name
    schedule.job = spec.job.model_dump(mode="json", exclude={"model"} if spec.job.model is None else None)
    schedule.cron = spec.cron
    schedule.timezone = spec.timezone
    schedule.run_at = spec.run_at
    schedule.enabled = spec.enabled
    schedule.updated_at = now


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SchedulePublic)
def create_schedule(
    spec: Annotated[ScheduleSpec, Body(examples=[EXAMPLE])], session: SessionDep, principal: Submitter
) -> SchedulePublic:
    """A schedule of the key's owner; the jobs it makes belong to that owner too."""
    schedule = Schedule(owner=principal.owner)
    _apply(session, schedule, spec, principal)
    session.add(schedule)
    session.commit()
    return SchedulePublic.model_validate(schedule)


@router.get("", response_model=SchedulesPublic)
def list_schedules(session: SessionDep, principal: Reader) -> SchedulesPublic:
    """The key owner's schedules (an admin key sees every owner's)."""
    query = select(Schedule).order_by(Schedule.created_at.desc())
    if not principal.is_admin:
        query = query.where(Schedule.owner == principal.owner)
    schedules = session.scalars(query).all()
    return SchedulesPublic(data=[SchedulePublic.model_validate(s) for s in schedules], count=len(schedules))


@router.get("/{schedule_id}", response_model=SchedulePublic, dependencies=READ)
def get_schedule(schedule: ScheduleDep) -> SchedulePublic:
    return SchedulePublic.model_validate(schedule)


@router.patch("/{schedule_id}", response_model=SchedulePublic)
def update_schedule(
    update: ScheduleUpdate, schedule: ScheduleDep, session: SessionDep, principal: Submitter
) -> SchedulePublic:
    """Change any of `name`, `job`, `cron` / `run_at`, `timezone`, `enabled`; the due time is worked out
    again. Giving `cron` drops `run_at` and the other way round."""
    changes = update.model_dump(mode="json", exclude_unset=True)
    current = SchedulePublic.model_validate(schedule).model_dump(
        mode="json", include={"name", "job", "cron", "run_at", "timezone", "enabled"}
    )
    if "cron" in changes and changes["cron"] is not None:
        current["run_at"] = None
    if "run_at" in changes and changes["run_at"] is not None:
        current["cron"] = None
    try:
        spec = ScheduleSpec.model_validate(current | changes)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", *e["loc"])}
                for e in error.errors(include_url=False, include_context=False)
            ]
        ) from None
    _apply(session, schedule, spec, principal)
    session.commit()
    return SchedulePublic.model_validate(schedule)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=SUBMIT)
def delete_schedule(schedule: ScheduleDep, session: SessionDep) -> Response:
    """Delete the schedule; the jobs it made stay (their `schedule_id` is cleared)."""
    session.delete(schedule)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
