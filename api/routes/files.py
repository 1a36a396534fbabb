"""Serves outputs kept in local storage (S3 outputs are fetched with presigned URLs instead), to the
owner of the job, upload or model they belong to (core/ownership.py) and to admin keys. A name that can't be
a storage key (core/paths.py `clean_key`: `..` parts, a part over 255 bytes) is a 422 saying why; a key
with no file, or another owner's, a 404."""

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from api.auth import Reader
from api.deps import SessionDep
from core.ownership import may_read_key
from core.storage import LocalStorage, get_storage

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{key:path}")
def get_file(key: str, session: SessionDep, principal: Reader) -> FileResponse:
    storage = get_storage()
    if not isinstance(storage, LocalStorage):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail="outputs are in S3; use the job's presigned URLs"
        )
    try:
        path = storage.path(key)
    except ValueError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(error)) from None
    if not storage.exists(key) or not may_read_key(session, principal, key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no file {key!r}")
    return FileResponse(path)
