from urllib.parse import urlparse

import httpx

from core.storage import S3Storage
from tests.conftest import BUCKET


def test_presigned_urls_name_the_public_endpoint(s3: str) -> None:
    port = urlparse(s3).port
    storage = S3Storage(
        BUCKET,
        "public-endpoint",
        endpoint_url=f"http://127.0.0.1:{port}",
        expires_s=60,
        public_endpoint_url=f"http://localhost:{port}",
    )
    storage.put("a.txt", b"written inside, read outside")
    url = storage.url("a.txt")
    assert url.startswith(f"http://localhost:{port}/{BUCKET}/public-endpoint/a.txt?")
    assert "X-Amz-Signature" in url
    assert httpx.get(url).content == b"written inside, read outside"


def test_without_a_public_endpoint_urls_name_the_endpoint(s3: str) -> None:
    storage = S3Storage(BUCKET, "inside", endpoint_url=s3, expires_s=60)
    assert storage.url("a.txt").startswith(f"{s3}/{BUCKET}/inside/a.txt?")
