"""The API in-process (FastAPI's TestClient) on the real Postgres, Redis and S3 (moto's server), without
uvicorn or a worker: the fast tier's way to test what the API answers."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def api(models_dir: Path, database: str, broker: str, s3: str) -> Iterator[TestClient]:
    from api.main import app

    with TestClient(app) as client:
        yield client
