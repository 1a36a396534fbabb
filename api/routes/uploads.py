"""Uploaded inputs, named by id in any number of jobs: images for img2img, inpaint and depth2img,
and zips of images (with captions) as training datasets."""

import uuid
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request, UploadFile, status
from starlette.concurrency import run_in_threadpool

from api.admission import too_many
from api.auth import Submitter
from api.schemas import UploadPublic
from core.auth import Principal
from core.config import get_settings
from core.dataset_refs import zip_dataset_problem
from core.db import get_sessionmaker
from core.quotas import QuotaExceeded, check_upload_bytes
from core.specs import upload_key
from core.storage import get_storage
from core.tables import Upload
from core.uploads import BadImage, store_upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
# A zip's first bytes: a local file header, or the end of an empty archive.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Multipart framing around the file: boundaries, part headers and a few short text fields.
FORM_OVERHEAD_BYTES = 64 * 1024

# Optional in the signature so that a request without it gets `read_upload`'s message rather than a bare
# "Field required"; the routes mark the body required (`REQUIRED_BODY`).
FileField = Annotated[UploadFile | None, File(description="The file (required).")]
REQUIRED_BODY = {"requestBody": {"required": True}}


async def refuse_unknown_fields(request: Request, allowed: tuple[str, ...]) -> None:
    """A 422 naming the multipart fields of `request` that are not in `allowed` (a misspelt `priorty`
    would otherwise be dropped without a word), and the allowed ones."""
    form = await request.form()  # parsed already for the route's own fields: Starlette keeps it
    if unknown := sorted(set(form.keys()) - set(allowed)):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["body", field],
                    "msg": f"unknown form field '{field}'; the fields are {', '.join(allowed)}",
                    "type": "extra_forbidden",
                }
                for field in unknown
            ],
        )


async def read_upload(request: Request, file: UploadFile | None) -> bytes:
    """The bytes of the multipart field `file`: a 422 without one, a 413 past DIFFQ_MAX_UPLOAD_BYTES.

    At most the limit and one byte are read (Starlette spools a large file to disk, not to memory).
    """
    limit = get_settings().max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"the upload is {declared} bytes; the limit is {limit} (DIFFQ_MAX_UPLOAD_BYTES)",
        )
    if file is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {"loc": ["body", "file"], "msg": "send the file as multipart field 'file'", "type": "missing"}
            ],
        )
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"the file is over {limit} bytes, the limit (DIFFQ_MAX_UPLOAD_BYTES)",
        )
    return data


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    openapi_extra=REQUIRED_BODY,
    responses={
        413: {"description": "Over the byte or pixel limit."},
        422: {"description": "Neither an image nor a zip."},
    },
)
async def create_upload(request: Request, principal: Submitter, file: FileField = None) -> UploadPublic:
    """Store an input image (PNG, JPEG, WebP or BMP) or a dataset zip (multipart field `file`); jobs
    name it by its id: `{"upload": id}` as an image, `"dataset": id` in a training job. Only the key's
    owner may name it. 429 past the owner's `max_upload_bytes_per_day`."""
    data = await read_upload(request, file)
    await refuse_unknown_fields(request, ("file",))
    # Checking, storing and recording block: off the event loop.
    return await run_in_threadpool(_store, data, principal)


def _store(data: bytes, principal: Principal) -> UploadPublic:
    with get_sessionmaker()() as session:
        try:
            check_upload_bytes(session, principal, len(data))
        except QuotaExceeded as error:
            raise too_many(error, ["body", "file"]) from None
        public = _store_file(data)
        session.add(Upload(id=public.id, owner=principal.owner, kind=public.kind, bytes=len(data)))
        session.commit()
    return public


def _store_file(data: bytes) -> UploadPublic:
    if data.startswith(ZIP_MAGICS):
        # A training dataset: refused here if it can never be one; its images are decoded when a job reads
        # it (one that doesn't decode fails the job with bad_input, naming the file).
        if problem := zip_dataset_problem(data, get_settings().max_dataset_bytes):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[{"loc": ["body", "file"], "msg": problem, "type": "bad_dataset"}],
            )
        upload_id = uuid.uuid4().hex
        get_storage().put(upload_key(upload_id), data, "application/zip")
        return UploadPublic(id=upload_id, key=upload_key(upload_id), kind="zip", bytes=len(data))
    try:
        upload_id, info = store_upload(data, get_storage())
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
        kind="image",
        width=info.width,
        height=info.height,
        format=info.format,
        bytes=len(data),
        image={"upload": upload_id},
    )
