"""Where job outputs live: an S3-compatible bucket (boto3) or a local folder.

`DIFFQ_STORAGE_URL` picks the backend: `s3://bucket/prefix` or `file:///dir`. Keys are relative
(`jobs/<id>/0.png`); each backend adds its own prefix.

Small objects (images, JSON) go through memory with `put`/`get`; files (model weights, checkpoints, an
SDXL checkpoint is ~7 GB) are streamed with `put_file`/`get_file`: on S3 as multipart transfers, whose
parts are `TRANSFER_CONFIG`'s size, so a file may be larger than one `PutObject` allows (5 GiB).
"""

import errno
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlparse

from core.config import Settings, get_settings
from core.paths import clean_key, safe_join

_clean_key = clean_key  # core.specs imports it under this name

MiB = 1024 * 1024


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def get(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def url(self, key: str, base_url: str | None = None) -> str: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...


# Local files being written; never listed.
PARTIAL_SUFFIX = ".part"


@contextmanager
def _missing_if_unnameable(key: str) -> Iterator[None]:
    """Reading `key`: a name the file system refuses (too long, ENAMETOOLONG) names no file, so KeyError,
    as for a missing one, not the OSError."""
    try:
        yield
    except FileNotFoundError:
        raise KeyError(key) from None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise KeyError(key) from None
        raise


class LocalStorage:
    """Files under a folder; the API serves them at `/v1/files/<key>`. Reading a key that names no file
    (missing, or a name the file system refuses as too long) raises KeyError; `exists` says False."""

    def __init__(self, root: Path, public_url: str) -> None:
        self.root = root.resolve()
        self.public_url = public_url.rstrip("/")

    def path(self, key: str) -> Path:
        return self.root / clean_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per write, so that two writers of one key never mix their bytes.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file

    def get(self, key: str) -> bytes:
        with _missing_if_unnameable(key):
            return self.path(key).read_bytes()

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
        shutil.copyfile(path, tmp)  # streamed in chunks, never whole in memory
        tmp.replace(target)

    def get_file(self, key: str, path: Path) -> None:
        with _missing_if_unnameable(key):
            source = self.path(key).open("rb")
        with source, open(path, "wb") as target:
            shutil.copyfileobj(source, target, MiB)

    def exists(self, key: str) -> bool:
        try:
            with _missing_if_unnameable(key):
                return self.path(key).is_file()
        except KeyError:
            return False

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def url(self, key: str, base_url: str | None = None) -> str:
        base = (base_url or self.public_url).rstrip("/")
        return f"{base}/v1/files/{quote(clean_key(key))}"

    def list(self, prefix: str) -> list[str]:
        """Keys under the folder `prefix` ("" for all), sorted; half-written files are left out."""
        head = prefix.strip("/")
        folder = self.root / clean_key(head) if head else self.root
        try:
            with _missing_if_unnameable(prefix):
                if not folder.is_dir():
                    return []
        except KeyError:
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not path.name.endswith(PARTIAL_SUFFIX)
        )


class S3Storage:
    """Objects in an S3-compatible bucket; URLs are presigned GETs."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        expires_s: int,
        public_endpoint_url: str | None = None,
        part_size: int = 64 * MiB,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.expires_s = expires_s
        # Files larger than one part go up in parts (S3 allows 5 MiB to 5 GiB each, 10,000 of them).
        self.transfer_config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        # SigV4 presigned URLs work on AWS and MinIO alike; path-style addressing lets a custom
        # endpoint such as http://minio:9000 work without per-bucket DNS names.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        # Presigning makes no request; a client for the public address signs URLs for that host.
        self.presign_client = (
            boto3.client("s3", endpoint_url=public_endpoint_url, config=config)
            if public_endpoint_url
            else self.client
        )

    def object_key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None
        return response["Body"].read()

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self.client.upload_file(
            str(path),
            self.bucket,
            self.object_key(key),
            ExtraArgs={"ContentType": content_type},
            Config=self.transfer_config,
        )

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(
                self.bucket, self.object_key(key), str(path), Config=self.transfer_config
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(key) from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def url(self, key: str, base_url: str | None = None) -> str:
        return self.presign_client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=self.expires_s,
        )

    def list(self, prefix: str) -> list[str]:
        """Keys under the folder `prefix` ("" for all), sorted."""
        root = f"{self.prefix}/" if self.prefix else ""
        head = prefix.strip("/")
        folder = root + (clean_key(head) + "/" if head else "")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
        return sorted(item["Key"][len(root) :] for page in pages for item in page.get("Contents", []))


def put_folder(storage: Storage, folder: Path, prefix: str) -> list[str]:
    """Upload every file under `folder` to `prefix/<relative path>`, streamed; return the keys written."""
    keys = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        storage.put_file(key, path)
        keys.append(key)
    return keys


def get_folder(storage: Storage, prefix: str, folder: Path, keys: list[str] | None = None) -> list[Path]:
    """Download the files under `prefix` (or just `keys`) into `folder`, streamed, keeping their
    relative paths."""
    paths = []
    for key in keys if keys is not None else storage.list(prefix):
        relative = key.removeprefix(f"{clean_key(prefix)}/")
        path = safe_join(folder, clean_key(relative))
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.get_file(key, path)
        paths.append(path)
    return paths


def make_storage(settings: Settings) -> Storage:
    parsed = urlparse(settings.storage_url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"DIFFQ_STORAGE_URL {settings.storage_url!r} names no bucket")
        return S3Storage(
            parsed.netloc,
            parsed.path,
            settings.s3_endpoint_url,
            settings.presign_expires_s,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)), settings.public_url)
    raise ValueError(f"DIFFQ_STORAGE_URL {settings.storage_url!r} must start with s3:// or file://")


@lru_cache
def get_storage() -> Storage:
    return make_storage(get_settings())
