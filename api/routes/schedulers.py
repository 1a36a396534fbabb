from fastapi import APIRouter

from api.auth import READ
from api.schemas import SchedulerPublic, SchedulersPublic
from core.schedulers import SCHEDULERS

router = APIRouter(prefix="/v1/schedulers", tags=["schedulers"])


@router.get("", response_model=SchedulersPublic, dependencies=READ)
def list_schedulers() -> SchedulersPublic:
    """The names a job's `params.scheduler` may take."""
    return SchedulersPublic(
        data=[
            SchedulerPublic(
                name=name,
                class_name=choice.class_name,
                overrides=choice.overrides,
                description=choice.description,
            )
            for name, choice in SCHEDULERS.items()
        ],
        default="without params.scheduler, a job uses the scheduler its model came with",
    )
