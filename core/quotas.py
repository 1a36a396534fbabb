"""Owner quotas: how much one owner may have queued, send in one batch and upload per day.

Each quota is a setting (`DIFFQ_MAX_QUEUED_JOBS`, ...) that an API key's `limits` may override for
whoever uses that key; 0 means no limit. The API answers 429 with `Retry-After` past a quota when
waiting can help, and a 422 when the request alone is over it (`QuotaExceeded.retry_after_s` None).

Counting and inserting race between concurrent submitters of one owner: `lock_owner` writes the owner's
row first, which holds a row lock on Postgres (the write lock on SQLite) until the transaction that
inserts the jobs commits, so submitters of one owner take turns and a quota is never overshot.
Running jobs at once (`max_running_jobs`) are limited where a worker claims a job, not here.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.auth import Principal
from core.config import get_settings
from core.tables import Job, JobStatus, Owner, Upload, utcnow

# What a key's `limits` may set, and what each value must be.
KEY_LIMITS: dict[str, type] = {
    "max_queued_jobs": int,
    "max_running_jobs": int,
    "max_batch_jobs": int,
    "max_upload_bytes_per_day": int,
    "max_priority": int,
    "rate_limit": str,
}
UPLOAD_WINDOW = timedelta(days=1)
# A queue drains at some jobs per second; a client over its queued quota retries after about this long.
QUEUED_RETRY_AFTER_S = 30


@dataclass
class QuotaExceeded(Exception):
    """An owner is over a quota: `message` names it and says what to do; retry after `retry_after_s`,
    or None when the request alone is over the quota, so that no wait will ever let it pass."""

    message: str
    retry_after_s: int | None


def limit_for(principal: Principal, name: str) -> Any:
    """The principal's limit `name`: its key's override, else the setting of that name."""
    if name in principal.limits:
        return principal.limits[name]
    return getattr(get_settings(), name)


def key_limits_problem(limits: dict[str, Any]) -> str | None:
    """Why `limits` can't be a key's overrides; None if it can."""
    for name, value in limits.items():
        kind = KEY_LIMITS.get(name)
        if kind is None:
            return f"unknown limit {name!r}; the limits are {', '.join(KEY_LIMITS)}"
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            # max_priority caps a priority: 0 there is a cap like any other, not "no limit".
            zero = "" if name == "max_priority" else " (0: no limit)"
            return f"limit {name} must be a whole number ≥ 0{zero}, got {value!r}"
        if kind is str and not _valid_rate(value):
            return f"limit {name} must be a rate like '100/minute' or '10/second;500/hour', got {value!r}"
    return None


def _valid_rate(value: Any) -> bool:
    from limits import parse_many

    try:
        return isinstance(value, str) and bool(parse_many(value))
    except ValueError:
        return False


def lock_owner(session: Session, owner: str) -> None:
    """Hold the owner's row until this transaction ends, so its quotas are counted by one submitter
    at a time (see the module docstring)."""
    session.execute(update(Owner).where(Owner.name == owner).values(last_submit_at=utcnow()))


def check_queued_jobs(session: Session, principal: Principal, adding: int) -> None:
    """Raise `QuotaExceeded` if `adding` more queued jobs would put the owner over `max_queued_jobs`.

    Takes the owner lock: call it in the transaction that inserts the jobs, right before the insert.
    """
    limit = int(limit_for(principal, "max_queued_jobs"))
    _check_fits_queue(principal, adding, limit)
    lock_owner(session, principal.owner)
    if not limit:
        return
    queued = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == principal.owner, Job.status == JobStatus.QUEUED)
    )
    if queued + adding > limit:
        raise QuotaExceeded(
            f"owner '{principal.owner}' has {queued} queued jobs and may have at most {limit} "
            f"(max_queued_jobs); {adding} more would exceed it. Wait for some to run, or cancel some",
            QUEUED_RETRY_AFTER_S,
        )


def _check_fits_queue(principal: Principal, count: int, limit: int) -> None:
    """Raise `QuotaExceeded` without a retry if `count` jobs alone are over `max_queued_jobs` (`limit`):
    they can never be queued at once, however many of the owner's jobs run first."""
    if limit and count > limit:
        raise QuotaExceeded(
            f"the batch has {count} jobs and owner '{principal.owner}' may have at most {limit} queued "
            f"(max_queued_jobs), so it can never fit; split it into batches of at most {limit} jobs",
            None,
        )


def check_batch_jobs(principal: Principal, count: int) -> None:
    """Raise `QuotaExceeded` without a retry if a batch of `count` jobs can never be admitted: over the
    key's `max_batch_jobs`, or alone over its `max_queued_jobs`. Checked before the jobs are."""
    limit = int(limit_for(principal, "max_batch_jobs"))
    if limit and count > limit:
        raise QuotaExceeded(
            f"the batch has {count} jobs; this API key may send at most {limit} per batch "
            f"(max_batch_jobs); split it into batches of at most {limit} jobs",
            None,
        )
    _check_fits_queue(principal, count, int(limit_for(principal, "max_queued_jobs")))


def check_upload_bytes(session: Session, principal: Principal, size: int) -> None:
    """Raise `QuotaExceeded` if `size` more bytes would put the owner over `max_upload_bytes_per_day`
    (the bytes uploaded in the last 24 hours). Takes the owner lock."""
    limit = int(limit_for(principal, "max_upload_bytes_per_day"))
    if limit and size > limit:
        raise QuotaExceeded(
            f"this file ({size} bytes) is over the whole daily upload quota of owner '{principal.owner}', "
            f"{limit} bytes (max_upload_bytes_per_day), so it can never be uploaded; send a smaller file",
            None,
        )
    lock_owner(session, principal.owner)
    if not limit:
        return
    since = utcnow() - UPLOAD_WINDOW
    recent = session.execute(
        select(Upload.created_at, Upload.bytes)
        .where(Upload.owner == principal.owner, Upload.created_at > since)
        .order_by(Upload.created_at)
    ).all()
    used = sum(row.bytes for row in recent)
    if used + size <= limit:
        return
    # Free enough of the window for this upload: wait until the oldest uploads fall out of it.
    freed, retry_at = 0, utcnow() + UPLOAD_WINDOW
    for row in recent:
        freed += row.bytes
        if used - freed + size <= limit:
            retry_at = row.created_at + UPLOAD_WINDOW
            break
    retry_after = max(1, int((retry_at - utcnow()).total_seconds()) + 1)
    raise QuotaExceeded(
        f"owner '{principal.owner}' uploaded {used} bytes in the last 24 hours and may upload at most "
        f"{limit} (max_upload_bytes_per_day); this file ({size} bytes) would exceed it",
        retry_after,
    )
