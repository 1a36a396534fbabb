"""The models that training jobs registered, with the job that made each: an owner sees its own and
the published ones; an admin sees and publishes any."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.auth import Admin, Reader
from api.deps import SessionDep
from api.schemas import ModelPublic, ModelsPublic, ModelUpdate
from core.model_registry import find_model, list_models

router = APIRouter(prefix="/v1/models", tags=["models"])


def _not_found(name: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no registered model named '{name}'")


@router.get("", response_model=ModelsPublic)
def get_models(
    session: SessionDep,
    principal: Reader,
    kind: Annotated[str | None, Query(pattern="^(unconditional|lora)$")] = None,
) -> ModelsPublic:
    owner = None if principal.is_admin else principal.owner
    models = [ModelPublic.model_validate(model) for model in list_models(session, kind, owner)]
    return ModelsPublic(data=models, count=len(models))


@router.get("/{name}", response_model=ModelPublic)
def get_model(name: str, session: SessionDep, principal: Reader) -> ModelPublic:
    model = find_model(session, name, None if principal.is_admin else principal.owner)
    if model is None:
        raise _not_found(name)
    return ModelPublic.model_validate(model)


@router.patch("/{name}", response_model=ModelPublic)
def update_model(name: str, update: ModelUpdate, session: SessionDep, principal: Admin) -> ModelPublic:
    """Publish a model to every owner, or take it back (admin keys)."""
    model = find_model(session, name)
    if model is None:
        raise _not_found(name)
    model.published = update.published
    session.commit()
    return ModelPublic.model_validate(model)
