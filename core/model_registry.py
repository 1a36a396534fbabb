"""The model registry: models that training jobs made, by name.

A training job stores its model under `models/<name>/<job id>/` and registers the name only when it
succeeds. Each registration has its own prefix, so replacing a model (`overwrite_output_model`)
never changes files that a worker is reading; workers cache each version in a folder of its own.
"""

import uuid
from typing import Any

from sqlalchemy import or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import BadInput
from core.jobs import lock_running_job
from core.tables import DEFAULT_OWNER, Job, RegisteredModel, utcnow


def model_prefix(name: str, job_id: uuid.UUID) -> str:
    return f"models/{name}/{job_id}"


def visible_to(owner: str | None) -> Any:
    """The models `owner` may see and use: its own and the published ones; every model for None (admin)."""
    if owner is None:
        return true()
    return or_(RegisteredModel.owner == owner, RegisteredModel.published)


def find_model(session: Session, name: str, owner: str | None = None) -> RegisteredModel | None:
    """The registered model `name` if `owner` may see it (see `visible_to`)."""
    query = select(RegisteredModel).where(RegisteredModel.name == name, visible_to(owner))
    return session.scalars(query).one_or_none()


def list_models(session: Session, kind: str | None = None, owner: str | None = None) -> list[RegisteredModel]:
    query = select(RegisteredModel).where(visible_to(owner)).order_by(RegisteredModel.created_at.desc())
    if kind:
        query = query.where(RegisteredModel.kind == kind)
    return list(session.scalars(query))


def register_model(
    session: Session,
    *,
    job_id: uuid.UUID,
    attempt: int,
    name: str,
    kind: str,
    storage_prefix: str,
    base_model: str | None = None,
    overwrite: bool = False,
) -> bool:
    """Register (or, with `overwrite`, replace) the model `name` as made by `job_id`.

    Only the attempt that runs the job registers: False if it no longer does (canceled or taken
    over). Registering again from the same job (a run resumed after its worker died between
    registering and finishing) is allowed. A name another job registered, without `overwrite`, is
    a `bad_input` error, and so is replacing another owner's model. The model belongs to the job's owner.

    The caller commits, at once: the lock this takes on the job's row is held until then.
    """
    try:
        if not lock_running_job(session, job_id, attempt):
            return False
        owner = session.scalar(select(Job.owner).where(Job.id == job_id)) or DEFAULT_OWNER
        existing = session.scalars(
            select(RegisteredModel).where(RegisteredModel.name == name).with_for_update()
        ).one_or_none()
        if existing is None:
            session.add(
                RegisteredModel(
                    name=name,
                    kind=kind,
                    base_model=base_model,
                    storage_prefix=storage_prefix,
                    job_id=job_id,
                    owner=owner,
                )
            )
        elif existing.job_id == job_id or (overwrite and existing.owner == owner):
            existing.kind = kind
            existing.base_model = base_model
            existing.storage_prefix = storage_prefix
            existing.job_id = job_id
            existing.updated_at = utcnow()
        else:
            raise BadInput(_taken(name, existing.job_id))
        session.flush()
    except IntegrityError:
        # Another job registered the same name between our read and our insert.
        session.rollback()
        raise BadInput(_taken(name, None)) from None
    return True


def _taken(name: str, job_id: uuid.UUID | None) -> str:
    by = f" by job {job_id}" if job_id else ""
    return (
        f"model name '{name}' was registered{by} while this job ran; submit again with another "
        "output_model, or with overwrite_output_model: true to replace it"
    )
