"""Who the request's API key acts for, and the quotas that apply to it."""

from fastapi import APIRouter

from api.auth import PrincipalDep
from api.schemas import PrincipalPublic
from core.quotas import KEY_LIMITS, limit_for

router = APIRouter(prefix="/v1/me", tags=["keys"])


@router.get("", response_model=PrincipalPublic)
def whoami(principal: PrincipalDep) -> PrincipalPublic:
    return PrincipalPublic(
        owner=principal.owner,
        scopes=sorted(principal.scopes),
        key_id=principal.key_id,
        limits={name: limit_for(principal, name) for name in KEY_LIMITS},
    )
