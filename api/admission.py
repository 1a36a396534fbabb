"""What a job spec must pass beyond its schema before it is written: the deployment's limits, a model
that exists, input images that exist and fit. Shared by single jobs, batches and schedules; a batch
checks each model and image once."""

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from core.config import get_settings
from core.model_configs import steps_problem
from core.specs import JobSpec
from core.storage import Storage
from core.submit import job_fields, limit_problems, model_problem, training_problems
from core.uploads import ImageInfo, input_image_problems

Loc = list[str | int]


class Admission:
    def __init__(self, session: Session, storage: Storage) -> None:
        self.session = session
        self.storage = storage
        self.settings = get_settings()
        self.models_dir = self.settings.models_dir
        self._models: dict[tuple[str, str], tuple[str, str] | None] = {}
        self._images: dict[str, ImageInfo | str] = {}

    def problems(self, spec: JobSpec, loc: Loc) -> list[dict[str, Any]]:
        """FastAPI-style error details for `spec`, located under `loc`; empty when it may be queued."""
        # Reported alone, as the schema's errors are: the other checks wait until the job fits the limits.
        if limits := limit_problems(spec.params, self.settings):
            return [{"loc": [*loc, *where], "msg": message, "type": kind} for where, message, kind in limits]
        errors = []
        if spec.model is not None:
            key = (spec.model, spec.type)
            if key not in self._models:
                self._models[key] = model_problem(self.session, spec.model, spec.type, self.models_dir)
            if found := self._models[key]:
                problem, kind = found
                errors.append({"loc": [*loc, "model"], "msg": problem, "type": kind})
            elif problem := steps_problem(spec.model, spec.params, self.models_dir):
                where = [*loc, "params", "num_inference_steps"]
                errors.append({"loc": where, "msg": problem, "type": "too_many_steps"})
        for where, message, kind in training_problems(self.session, spec, self.models_dir, self.storage):
            errors.append({"loc": [*loc, *where], "msg": message, "type": kind})
        for field, message in input_image_problems(spec.params, self.storage, self._images):
            errors.append({"loc": [*loc, "params", field], "msg": message, "type": "bad_image"})
        return errors


def job_values(spec: JobSpec, priority: int = 0) -> dict[str, Any]:
    """The columns to store for `spec`, with a seed picked if it names none; a spec without a
    priority takes `priority` (its batch's)."""
    return job_fields(spec, priority)


def unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)
