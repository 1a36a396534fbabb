"""Uploaded files, such as a training dataset's zip: upload once, name by id in any number of jobs."""

import uuid

from fastapi import APIRouter, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.schemas import UploadPublic
from core.storage import get_storage

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=UploadPublic, openapi_extra=_MULTIPART_BODY
)
async def create_upload(request: Request) -> UploadPublic:
    """Store a file (multipart field `file`) under `uploads/<id>`; jobs name it by its id."""
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[
                    {
                        "loc": ["body", "file"],
                        "msg": "send the file as multipart field 'file'",
                        "type": "missing",
                    }
                ],
            )
        data = await upload.read()
    upload_id = uuid.uuid4().hex
    key = f"uploads/{upload_id}"
    await run_in_threadpool(get_storage().put, key, data)
    return UploadPublic(id=upload_id, key=key, bytes=len(data))
