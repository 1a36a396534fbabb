"""Who is asking: the `Authorization: Bearer <key>` of each request, its scopes, and its rate limit.

401 for a missing, unknown or revoked key (with `WWW-Authenticate: Bearer` and how to get one), 403 for
a key without the scope a route needs, 429 with `Retry-After` past the key's request rate. The scheme
is declared in OpenAPI, so `/docs` has an Authorize button.
"""

import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import update

from api.rate_limit import hit_rate_limit
from api.session import SessionDep
from core.auth import ANONYMOUS_ADMIN, Principal, Scope, authenticate
from core.config import get_settings
from core.tables import ApiKey, utcnow

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key: `Authorization: Bearer dq_…`. An operator makes one with "
    "`diffq keys create --owner NAME`.",
)
HOW_TO_GET_A_KEY = (
    "send an API key as 'Authorization: Bearer <key>'; an operator creates one with "
    "`diffq keys create --owner NAME` (the CLI reads it from DIFFQ_API_KEY)"
)


def unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"})


def current_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The principal of this request; raises 401 or 429 (see the module docstring)."""
    if not get_settings().auth:
        return ANONYMOUS_ADMIN
    if credentials is None:
        raise unauthorized(f"this request has no API key; {HOW_TO_GET_A_KEY}")
    principal = authenticate(session, credentials.credentials)
    if principal is None:
        raise unauthorized(f"the API key is unknown or was revoked; {HOW_TO_GET_A_KEY}")
    hit_rate_limit(principal)
    stale = utcnow() - timedelta(minutes=1)
    if principal.key_id is not None and (principal.last_used_at is None or principal.last_used_at < stale):
        # Coarse (once a minute at most per key), decided from the row just read, so that requests
        # don't write on every call; the WHERE keeps concurrent requests from writing it twice.
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == principal.key_id)
            .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < stale))
            .values(last_used_at=utcnow())
        )
        session.commit()
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(scope: Scope) -> Callable[[Principal], Principal]:
    """A dependency that answers 403 unless the request's key has `scope` (admin has every scope)."""

    def check(principal: PrincipalDep) -> Principal:
        if not principal.has(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this API key lacks the '{scope}' scope "
                f"(it has: {', '.join(sorted(principal.scopes))}); "
                f"ask an operator for a key with it: `diffq keys create --owner {principal.owner} "
                f"--scopes {scope}`",
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require(Scope.READ))]
Submitter = Annotated[Principal, Depends(require(Scope.SUBMIT))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]

# For a route's `dependencies=`, when the route needs the scope but not the principal itself.
READ = [Depends(require(Scope.READ))]
SUBMIT = [Depends(require(Scope.SUBMIT))]


def scrape_access(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """`/metrics`: an admin key, or the scrape token of DIFFQ_METRICS_TOKEN (for Prometheus)."""
    token = get_settings().metrics_token
    if token and credentials and hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        return
    principal = current_principal(request, session, credentials)
    if not principal.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="/metrics needs an admin key or the scrape token set in DIFFQ_METRICS_TOKEN",
        )


def owner_filter(principal: Principal, owner: str | None, column: Any, what: str) -> list[Any]:
    """The WHERE conditions on `column` (an owner column) for a list of `what` ("jobs", "batches"): the
    principal's own rows, or with an admin key every owner's, or `owner`'s. 403 for `?owner=` another
    owner than one's own without an admin key."""
    if principal.is_admin:
        return [column == owner] if owner is not None else []
    if owner is not None and owner != principal.owner:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"?owner= is for admin keys; without it you see your own {what}"
        )
    return [column == principal.owner]
