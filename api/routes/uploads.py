"""Input images for img2img, inpaint and depth2img jobs: upload once, name in any number of jobs."""

from fastapi import APIRouter, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.schemas import UploadPublic
from core.config import get_settings
from core.specs import upload_key
from core.storage import get_storage
from core.uploads import BadImage, store_upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

# Multipart framing around the file: boundaries and part headers.
_FORM_OVERHEAD_BYTES = 64 * 1024

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


async def read_upload(request: Request, field: str = "file") -> tuple[bytes, dict[str, str]]:
    """The bytes of the multipart file `field` and the form's text fields; a 413 past the upload limit.

    The declared length is checked before the body is read; a body without one is read up to the limit.
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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    openapi_extra=_MULTIPART_BODY,
    responses={413: {"description": "Over the byte or pixel limit."}, 422: {"description": "Not an image."}},
)
async def create_upload(request: Request) -> UploadPublic:
    """Store an input image (PNG, JPEG, WebP or BMP; multipart field `file`); jobs name it by its id."""
    data, _ = await read_upload(request)
    try:
        # Decoding and storing block: off the event loop.
        upload_id, info = await run_in_threadpool(store_upload, data, get_storage())
    except BadImage as error:
        if error.too_large:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=error.message) from None
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body", "file"], "msg": error.message, "type": "bad_image"}],
        ) from None
    return UploadPublic(
        id=upload_id,
        key=upload_key(upload_id),
        width=info.width,
        height=info.height,
        format=info.format,
        bytes=len(data),
        image={"upload": upload_id},
    )
