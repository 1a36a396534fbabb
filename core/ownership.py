"""What an owner may name in a job: its own uploads and its own jobs' outputs as input images and
datasets; its own registered models and LoRAs, and those an admin published. An admin may name anything.

Something another owner has answers exactly as something that does not exist, so that names and ids
leak nothing. Uploads made before owners existed have no row and belong to the default owner.
"""

import re
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.auth import Principal
from core.dataset_refs import parse_dataset
from core.memo import Memo
from core.specs import ImageRef, JobSpec, field_value
from core.tables import DEFAULT_OWNER, Job, RegisteredModel, Upload

# (location in the body, message, error type), as core/submit.py reports problems.
Problem = tuple[tuple[str, ...], str, str]
JOB_KEY = re.compile(r"^jobs/([0-9a-f-]{36})(/|$)")
UPLOAD_KEY = re.compile(r"^uploads/([0-9a-f]{32})$")
MODEL_KEY = re.compile(r"^models/([^/]+)/")


def upload_owner(session: Session, upload_id: str) -> str:
    owner = session.scalar(select(Upload.owner).where(Upload.id == upload_id))
    return owner or DEFAULT_OWNER


def _others_upload(session: Session, principal: Principal, upload_id: str) -> bool:
    """Whether `upload_id` is another owner's upload. One without a row (none such, or made before
    owners existed) is left to the existence checks: its 128-bit random id is its only secret."""
    owner = session.scalar(select(Upload.owner).where(Upload.id == upload_id))
    return owner is not None and owner != principal.owner


def key_owner(session: Session, key: str) -> str | None:
    """The owner of the storage object `key` (a job's output, an upload, a registered model's file);
    None for keys outside those (only an admin may name or read those)."""
    if match := JOB_KEY.match(key):
        try:
            job_id = uuid.UUID(match.group(1))
        except ValueError:
            return None
        return session.scalar(select(Job.owner).where(Job.id == job_id))
    if match := UPLOAD_KEY.match(key):
        return upload_owner(session, match.group(1))
    if match := MODEL_KEY.match(key):
        return session.scalar(select(RegisteredModel.owner).where(RegisteredModel.name == match.group(1)))
    return None


def may_read_key(session: Session, principal: Principal, key: str) -> bool:
    """Whether `principal` may name or download the storage object `key`."""
    if principal.is_admin:
        return True
    owner = key_owner(session, key)
    return owner is not None and owner == principal.owner


def reference_problems(
    session: Session, principal: Principal, spec: JobSpec, memo: Memo | None = None
) -> list[Problem]:
    """A problem for each input image or dataset of `spec` that is not the principal's to name. `memo`
    (one per request) looks each upload and key up once for all the jobs of a batch."""
    if principal.is_admin:
        return []
    memo = memo if memo is not None else Memo()

    def others_upload(upload_id: str) -> bool:
        return memo.get(("others_upload", upload_id), lambda: _others_upload(session, principal, upload_id))

    def may_read(key: str) -> bool:
        return memo.get(("may_read_key", key), lambda: may_read_key(session, principal, key))

    problems: list[Problem] = []
    for field in spec.params.image_fields:
        ref: ImageRef | None = getattr(spec.params, field)
        if ref is None:
            continue
        if ref.upload is not None and others_upload(ref.upload):
            message = f"upload {ref.upload!r} does not exist; upload the image with POST /v1/uploads first"
            problems.append((("params", field), message, "bad_image"))
        elif ref.key is not None and not may_read(ref.key):
            message = (
                f"storage key {ref.key!r} is not yours to read; name your own uploads "
                '({"upload": id}) or your own jobs\' outputs (jobs/<job id>/…)'
            )
            problems.append((("params", field), message, "bad_image"))
    dataset = field_value(spec.params, "dataset")
    if dataset is not None:
        ref = parse_dataset(dataset)
        if ref.kind == "upload" and others_upload(ref.name):
            message = f"no upload with id {ref.name}; upload the dataset zip with POST /v1/uploads first"
            problems.append((("params", "dataset"), message, "bad_dataset"))
        elif ref.kind == "prefix" and not may_read(ref.name + "/"):
            message = (
                f"storage prefix {ref.name!r} is not yours to read; name a builtin dataset, your own "
                "upload, or a prefix of your own job's outputs (an admin key may name any prefix)"
            )
            problems.append((("params", "dataset"), message, "bad_dataset"))
    return problems
