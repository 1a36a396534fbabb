"""What a job spec must pass beyond its schema before it is written: a model that exists, input images
that exist and fit. Shared by single jobs and batches; a batch checks each model and image once."""

from typing import Any

from fastapi import HTTPException, status

from core.config import get_settings
from core.model_refs import reference_problem
from core.specs import JobSpec, new_seed
from core.storage import Storage
from core.uploads import ImageInfo, input_image_problems

Loc = list[str | int]


class Admission:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.models_dir = get_settings().models_dir
        self._models: dict[str, str | None] = {}
        self._images: dict[str, ImageInfo | str] = {}

    def problems(self, spec: JobSpec, loc: Loc) -> list[dict[str, Any]]:
        """FastAPI-style error details for `spec`, located under `loc`; empty when it may be queued."""
        errors = []
        if spec.model not in self._models:
            self._models[spec.model] = reference_problem(spec.model, self.models_dir)
        problem = self._models[spec.model]
        if problem:
            errors.append({"loc": [*loc, "model"], "msg": problem, "type": "unknown_model"})
        for field, message in input_image_problems(spec.params, self.storage, self._images):
            errors.append({"loc": [*loc, "params", field], "msg": message, "type": "bad_image"})
        return errors


def job_values(spec: JobSpec) -> dict[str, Any]:
    """The `type`, `model` and `params` to store for `spec`, with a seed picked if it names none."""
    params = spec.params.model_dump(mode="json")
    if "seed" in params and params["seed"] is None:
        params["seed"] = new_seed()  # recorded, so the job can be remade
    return {"type": spec.type, "model": spec.model, "params": params}


def unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)
