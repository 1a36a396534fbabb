"""Reading multipart uploads with the upload byte limit, for image uploads and JSON Lines batches."""

from fastapi import HTTPException, Request, status
from starlette.datastructures import UploadFile

from core.config import get_settings

# Multipart framing around the file: boundaries, part headers and a few short text fields.
_FORM_OVERHEAD_BYTES = 64 * 1024


def multipart_body(**fields: dict[str, str]) -> dict:
    """OpenAPI for a multipart body with a required `file` and optional text `fields`."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}, **fields},
                    }
                }
            },
        }
    }


async def read_upload(request: Request, field: str = "file") -> tuple[bytes, dict[str, str]]:
    """The bytes of the multipart file `field` and the form's text fields; a 413 past the upload limit.

    The declared length is checked before the body is read; a body without one is read up to the limit
    (Starlette spools a large file to disk, not to memory).
    """
    limit = get_settings().max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"the upload is {declared} bytes; the limit is {limit} (DIFFQ_MAX_UPLOAD_BYTES)",
        )
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[
                    {
                        "loc": ["body", field],
                        "msg": f"send the file as multipart field '{field}'",
                        "type": "missing",
                    }
                ],
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"the file is over {limit} bytes, the limit (DIFFQ_MAX_UPLOAD_BYTES)",
            )
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        return data, fields
