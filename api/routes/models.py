"""The models that training jobs registered, with the job that made each."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import SessionDep
from api.schemas import ModelPublic, ModelsPublic
from core.model_registry import find_model, list_models

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelsPublic)
def get_models(
    session: SessionDep,
    kind: Annotated[str | None, Query(pattern="^(unconditional|lora)$")] = None,
) -> ModelsPublic:
    models = [ModelPublic.model_validate(model) for model in list_models(session, kind)]
    return ModelsPublic(data=models, count=len(models))


@router.get("/{name}", response_model=ModelPublic)
def get_model(name: str, session: SessionDep) -> ModelPublic:
    model = find_model(session, name)
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no registered model named '{name}'")
    return ModelPublic.model_validate(model)
