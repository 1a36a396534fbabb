"""Scheduled jobs: a job template submitted on a cron expression, or once at `run_at`.

`diffq beat` calls `fire_due_schedules` every `DIFFQ_SCHEDULE_INTERVAL_S`. Each due time makes
exactly one job, however many beat processes run: a beat first moves the schedule's `next_run_at`
on with a conditional UPDATE (`WHERE next_run_at = <the due time it read>`), which only one beat
can win, and the job it then adds in the same transaction carries `(schedule_id, scheduled_for)`,
which the `jobs` table holds unique.

A beat that was down fires each schedule's missed due time once, then goes on from the present.
"""

import logging
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadDateError, croniter
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.job_types import TRAINING_TYPES
from core.queue import Waiting, wake_workers
from core.specs import JOB_SPEC, JobSpec
from core.submit import job_from_spec
from core.tables import Job, JobStatus, Schedule, utcnow

logger = logging.getLogger(__name__)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def next_cron_time(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time after `after` that `cron`, read in `timezone`, names; in UTC."""
    local = as_utc(after).astimezone(ZoneInfo(timezone))
    return as_utc(croniter(cron, local).get_next(datetime))


# Each cron field: its name and the bounds of its values (day of week: 0 and 7 are both Sunday).
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
CRON_EXAMPLE = "write five fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"


def cron_problem(cron: str) -> str | None:
    """Why `cron` is not a five-field cron expression diffq runs, or None if it is.

    Refused: any other number of fields (croniter's six-field seconds form, `@daily`-style names), what
    croniter can't parse, a step outside 1..(the field's span) (e.g. `*/0`, `*/100000`: at most one value
    per span), a reversed range (`5-1`, which croniter would wrap around). Whether it ever fires is
    `never_fires`'s question."""
    fields = cron.split()
    if len(fields) != len(CRON_FIELDS):
        return f"'{cron}' is not a cron expression: it has {len(fields)} fields; {CRON_EXAMPLE}"
    for text, (name, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for item in text.split(","):
            base, _, step = item.partition("/")
            if step and not (step.isdigit() and 1 <= int(step) <= high - low):
                return f"'{cron}': the {name} step '/{step}' must be a whole number from 1 to {high - low}"
            start, _, end = base.partition("-")
            if start.isdigit() and end.isdigit() and int(start) > int(end):
                return f"'{cron}': the {name} range '{base}' runs backwards; write it low-high"
    if not croniter.is_valid(cron):
        return f"'{cron}' is not a cron expression; {CRON_EXAMPLE} (values in range, e.g. minute 0-59)"
    return None


def never_fires(cron: str, timezone: str) -> bool:
    """Whether the valid `cron` names no time at all (e.g. '0 0 30 2 *': February the 30th)."""
    try:
        next_cron_time(cron, timezone, utcnow())
    except CroniterBadDateError:
        return True
    return False


@cache
def known_timezones() -> frozenset[str]:
    """The IANA zone names this machine knows (tzdata), e.g. 'Europe/Paris'; not the system's aliases
    'localtime' and 'posixrules', whose meaning depends on the machine."""
    return frozenset(available_timezones()) - {"localtime", "posixrules"}


class ScheduleSpec(BaseModel):
    """What a user submits to make a schedule: a job template and when to submit it."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    job: JobSpec
    cron: str | None = Field(
        default=None, max_length=255, description="Five-field cron, e.g. '0 3 * * *' (03:00 daily)."
    )
    run_at: AwareDatetime | None = Field(default=None, description="One run at this time (with a zone).")
    timezone: str = Field(
        default="UTC", max_length=64, description="The IANA zone the cron expression is read in."
    )
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and (problem := cron_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # The list, not ZoneInfo(value): that also opens files such as 'localtime' or 'zone.tab'.
        if value not in known_timezones():
            raise ValueError(f"unknown time zone '{value}'; use an IANA name such as 'Europe/Paris'")
        return value

    @model_validator(mode="after")
    def _when(self) -> "ScheduleSpec":
        if (self.cron is None) == (self.run_at is None):
            raise ValueError("give exactly one of cron (a recurring schedule) or run_at (a single run)")
        if self.cron is not None and never_fires(self.cron, self.timezone):
            raise ValueError(f"cron '{self.cron}' never fires (no date matches it, e.g. February the 30th)")
        if self.cron is not None and self.job.type in TRAINING_TYPES and not self.job.overwrite_output_model:
            raise ValueError(
                "a recurring training schedule registers its output_model at every run; set "
                "job.overwrite_output_model: true so that each run replaces the last one's model"
            )
        return self


def fire_due_schedules(session: Session, now: datetime | None = None, limit: int = 100) -> dict[str, int]:
    """Make the jobs of the schedules that are due, each due time once; enqueue them.

    Commits each due time's job before it is sent."""
    now = now or utcnow()
    due = session.execute(
        select(Schedule.id, Schedule.next_run_at)
        .where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
        .order_by(Schedule.next_run_at)
        .limit(limit)
    ).all()
    session.commit()
    fired = 0
    for schedule_id, due_at in due:
        job_id = fire_schedule(session, schedule_id, due_at, now)
        session.commit()
        if job_id is not None:
            fired += 1
            try:
                job = session.get_one(Job, job_id)
                wake_workers(session, [Waiting(job.id, job.queue, job.type, job.model)])
                session.commit()
            except Exception:
                session.rollback()
                # The job row is committed and queued: an idle worker finds it. It is not lost.
                logger.exception("could not wake a worker for job %s of schedule %s", job_id, schedule_id)
    return {"fired": fired} if fired else {}


def fire_schedule(
    session: Session, schedule_id: uuid.UUID, due_at: datetime, now: datetime
) -> uuid.UUID | None:
    """Make the job of one due time; None if another beat made it, or the schedule changed meanwhile.
    The caller commits, and sends the job only then."""
    schedule = session.get(Schedule, schedule_id, populate_existing=True)
    if schedule is None:
        return None
    next_run_at = next_cron_time(schedule.cron, schedule.timezone, now) if schedule.cron else None
    moved = session.execute(
        update(Schedule)
        .where(Schedule.id == schedule_id, Schedule.enabled.is_(True), Schedule.next_run_at == due_at)
        .values(next_run_at=next_run_at, last_run_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        return None
    job = _job_for(schedule.job, schedule.owner, schedule_id, due_at, now)
    session.add(job)
    session.flush()
    logger.info("schedule %s (due %s) made job %s", schedule_id, due_at, job.id)
    # A job that can't run (its template went stale) is recorded failed, not sent.
    return job.id if job.status == JobStatus.QUEUED else None


def _job_for(
    template: dict[str, Any], owner: str, schedule_id: uuid.UUID, due_at: datetime, now: datetime
) -> Job:
    try:
        spec = JOB_SPEC.validate_python(template)
    except ValidationError as error:
        return Job(
            type=str(template.get("type", "unknown"))[:32],
            model=template.get("model"),
            params=template.get("params") or {},
            status=JobStatus.FAILED,
            error={
                "code": "bad_input",
                "message": f"the schedule's job template is no longer valid; update the schedule: {error}",
            },
            schedule_id=schedule_id,
            scheduled_for=due_at,
            finished_at=now,
            owner=owner,
        )
    return job_from_spec(spec, owner, schedule_id=schedule_id, scheduled_for=due_at)
