"""What a job spec must pass beyond its schema before it is written: the deployment's limits, a model
that exists, input images that exist and fit, a webhook URL that leads to a public address. Shared by
single jobs, batches and schedules. One `Admission` per request: a batch asks each question of its jobs
(a model, its scheduler's step limit, an upload's owner, a LoRA, an image, a webhook URL) once per
distinct value (core/memo.py), so 10,000 jobs that differ only in prompt and seed cost one look-up each."""

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from core.auth import Principal
from core.config import get_settings
from core.memo import Memo
from core.model_configs import native_size, size_problem, steps_problem
from core.ownership import reference_problems
from core.quotas import QuotaExceeded, limit_for
from core.scheduling import priority_problem
from core.specs import JobSpec, field_value
from core.storage import Storage
from core.submit import job_fields, limit_problems, model_problem, training_problems
from core.uploads import ImageInfo, input_image_problems
from core.webhook_urls import url_problem

Loc = list[str | int]


class Admission:
    """Checks job specs for `principal`, who may name only what it owns (core/ownership.py)."""

    def __init__(self, session: Session, storage: Storage, principal: Principal) -> None:
        self.session = session
        self.storage = storage
        self.principal = principal
        # Whose registered models are visible: the principal's own and published ones; all for an admin.
        self.owner = None if principal.is_admin else principal.owner
        self.settings = get_settings()
        self.models_dir = self.settings.models_dir
        self.memo = Memo()
        self._images: dict[str, ImageInfo | str] = {}

    def problems(self, spec: JobSpec, loc: Loc) -> list[dict[str, Any]]:
        """FastAPI-style error details for `spec`, located under `loc`; empty when it may be queued."""
        # Reported alone, as the schema's errors are: the other checks wait until the job fits the limits.
        if limits := limit_problems(spec.params, self.settings, self.native(spec)):
            return [{"loc": [*loc, *where], "msg": message, "type": kind} for where, message, kind in limits]
        errors = self.priority_problems(spec.priority, [*loc, "priority"])
        if (model := spec.model) is not None:
            job_type = spec.type
            if found := self.memo.get(
                ("model_problem", model, job_type),
                lambda: model_problem(self.session, model, job_type, self.models_dir, self.owner),
            ):
                problem, kind = found
                errors.append({"loc": [*loc, "model"], "msg": problem, "type": kind})
            elif problem := steps_problem(model, spec.params, self.models_dir, self.memo):
                where = [*loc, "params", "num_inference_steps"]
                errors.append({"loc": where, "msg": problem, "type": "too_many_steps"})
            elif job_type == "text2img" and (
                problem := size_problem(model, spec.params, self.models_dir, self.memo)
            ):
                errors.append({"loc": [*loc, "params", "width"], "msg": problem, "type": "too_small"})
        # Another owner's upload is reported as missing, and nothing more is read from it.
        if not_yours := reference_problems(self.session, self.principal, spec, self.memo):
            return errors + [
                {"loc": [*loc, *where], "msg": message, "type": kind} for where, message, kind in not_yours
            ]
        for where, message, kind in training_problems(
            self.session, spec, self.models_dir, self.storage, self.owner, self.memo
        ):
            errors.append({"loc": [*loc, *where], "msg": message, "type": kind})
        for field, message in input_image_problems(spec.params, self.storage, self._images):
            errors.append({"loc": [*loc, "params", field], "msg": message, "type": "bad_image"})
        if spec.webhook is not None:
            errors += self.webhook_problems(spec.webhook.url, [*loc, "webhook", "url"])
        return errors

    def native(self, spec: JobSpec) -> int | None:
        """The side of a text2img model's own images, for a size with one side unset; None otherwise."""
        model = spec.model
        if (
            spec.type != "text2img"
            or model is None
            or (field_value(spec.params, "width") is None) == (field_value(spec.params, "height") is None)
        ):
            return None
        return self.memo.get(("native_size", model), lambda: native_size(model, self.models_dir))

    def priority_problems(self, priority: int | None, loc: Loc) -> list[dict[str, Any]]:
        """The error detail for a priority above what the principal's key allows (`max_priority`)."""
        if priority is None:
            return []
        problem = priority_problem(priority, int(limit_for(self.principal, "max_priority")))
        return [{"loc": loc, "msg": problem, "type": "priority_too_high"}] if problem else []

    def webhook_problems(self, url: str, loc: Loc) -> list[dict[str, Any]]:
        """The error detail for a webhook URL that may not be sent to (SSRF, see core/webhook_urls.py)."""
        problem = self.memo.get(
            ("url_problem", url), lambda: url_problem(url, self.settings.webhook_allow_private)
        )
        return [{"loc": loc, "msg": problem, "type": "webhook_url_refused"}] if problem else []


def job_values(spec: JobSpec, owner: str, priority: int = 0, memo: Memo | None = None) -> dict[str, Any]:
    """The columns to store for `owner`'s `spec`, with a seed picked if it names none; a spec without a
    priority takes `priority` (its batch's). A batch passes its admission's `memo`."""
    return job_fields(spec, priority, memo) | {"owner": owner}


def too_many(error: QuotaExceeded, loc: Loc) -> HTTPException:
    """429 with `Retry-After` for an owner over a quota (core/quotas.py) while waiting can help.

    A request that alone is over a quota (`retry_after_s` None) can never pass it: a 422 located at
    `loc`, without `Retry-After`, so that clients stop retrying it. 422 rather than 413 because what is
    over is a count of jobs (or a quota of bytes), not the body's size: a 40-byte sweep can expand past
    it, and DIFFQ_MAX_BATCH_JOBS's cap (core/batch_specs.py) answers 422 too.
    """
    if error.retry_after_s is None:
        return unprocessable([{"loc": loc, "msg": error.message, "type": "over_quota"}])
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=error.message,
        headers={"Retry-After": str(error.retry_after_s)},
    )


def unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)
