"""Input images for img2img, inpaint and depth2img jobs: upload once, name in any number of jobs."""

from fastapi import APIRouter, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from api.forms import multipart_body, read_upload
from api.schemas import UploadPublic
from core.specs import upload_key
from core.storage import get_storage
from core.uploads import BadImage, store_upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    openapi_extra=multipart_body(),
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
