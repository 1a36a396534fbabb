"""Test settings and the real services behind the end-to-end tests.

Settings are environment variables, set here before any project module is imported: a Postgres
database and a Redis db number of the tests' own, moto's S3 server on a loopback port, and a
models dir with the tiny models.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cli.quickstart import free_port

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

PG_SERVER = os.environ.get("DIFFQ_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("DIFFQ_TEST_REDIS", "redis://127.0.0.1:6379")
# Separate names let several checkouts run their suites on one machine at once.
TEST_DB = os.environ.get("DIFFQ_TEST_DB", "diffq_test")
REDIS_DB = int(os.environ.get("DIFFQ_TEST_REDIS_DB", "13"))
S3_PORT = free_port()
BUCKET = "diffq-test"
TMP = Path(tempfile.mkdtemp(prefix="diffq-tests-"))

os.environ.update(
    {
        "DIFFQ_HOME": str(TMP / "home"),
        "DIFFQ_DATABASE_URL": f"{PG_SERVER}/{TEST_DB}",
        "DIFFQ_BROKER_URL": f"{REDIS_SERVER}/{REDIS_DB}",
        "DIFFQ_STORAGE_URL": f"s3://{BUCKET}/outputs",
        "DIFFQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "DIFFQ_MODELS_DIR": str(TMP / "models"),
        "DIFFQ_PROGRESS_MIN_INTERVAL_S": "0.05",
        # A running job reads its status at every step, so that a cancel lands at the next step.
        "DIFFQ_CANCEL_CHECK_INTERVAL_S": "0",
        # Small enough that the tests can send a file over it.
        "DIFFQ_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "DIFFQ_QUEUE": "diffq-test",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Two torch threads per process on a 2-core machine shared by the tests and the workers
        # thrash; one each keeps runs steady.
        "OMP_NUM_THREADS": "1",
        # The tests' clients send many requests a second; the rate limit has its own test.
        "DIFFQ_RATE_LIMIT": "100000/second",
    }
)
# The owner the tests' API key (DIFFQ_API_KEY, made by the `database` fixture) acts for.
TEST_OWNER = "tests"


E2E_FIXTURES = {"stack", "client"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark as `e2e` every test that runs real worker processes, the API over HTTP or a fuzzer: those
    under tests/e2e/ and tests/fuzz/ and any test that uses the `stack` fixture. `pytest -m "not e2e"`
    is the fast tier."""
    for item in items:
        in_e2e_dir = "e2e" in item.path.parts or "fuzz" in item.path.parts
        if in_e2e_dir or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier (`-m "not e2e"`) does not even import tests/e2e/ and tests/fuzz/, all of whose tests
    it would deselect: schemathesis and hypothesis alone take seconds to import."""
    fast_tier = " ".join(str(config.getoption("markexpr") or "").split()) == "not e2e"
    in_tests = collection_path.parent == Path(__file__).parent
    return True if fast_tier and in_tests and collection_path.name in ("e2e", "fuzz") else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from core.config import get_settings
    from models_store.tiny import make_tiny_models

    models = get_settings().models_dir
    make_tiny_models(models)
    return models


@pytest.fixture(scope="session")
def database() -> str:
    """A fresh test database, migrated to head with Alembic."""
    import psycopg

    from core.config import get_settings
    from migrations.run import upgrade

    admin = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEST_DB}")
    upgrade()
    os.environ["DIFFQ_API_KEY"] = new_key(TEST_OWNER)
    return get_settings().database_url


def new_key(owner: str, scopes: list[str] | None = None, **limits: int | str) -> str:
    """A new API key for `owner` (read and submit unless `scopes` says otherwise)."""
    from core.auth import create_key
    from core.db import db_session

    with db_session() as session:
        return create_key(session, owner, scopes, limits)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def admin_key(database: str) -> str:
    return new_key("admins", ["admin"])


@pytest.fixture(scope="session")
def broker() -> str:
    import redis

    from core.config import get_settings

    url = get_settings().broker_url
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{S3_PORT}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@dataclass
class Stack:
    api_url: str
    models_dir: Path
    tmp: Path


@pytest.fixture(scope="session")
def stack(models_dir: Path, database: str, broker: str, s3: str) -> Iterator[Stack]:
    """The API over HTTP and one real worker process, on Postgres, Redis and S3."""
    from cli.quickstart import start_api
    from tests.utils.services import WorkerProcess

    port = free_port()
    start_api(port)
    worker = WorkerProcess(TMP / "worker.log", env={}, name="main@%h")
    worker.wait_ready()
    yield Stack(api_url=f"http://127.0.0.1:{port}", models_dir=models_dir, tmp=TMP)
    worker.stop()


@pytest.fixture
def client(stack: Stack):
    from cli.client import Client

    return Client(stack.api_url)


@pytest.fixture
def admin_client(stack: Stack, admin_key: str):
    """`client` with an admin key: every owner's jobs, and /metrics."""
    from cli.client import Client

    return Client(stack.api_url, api_key=admin_key)


@pytest.fixture(scope="session")
def api_client(models_dir: Path, database: str, broker: str, s3: str) -> Iterator["TestClient"]:
    """The API in-process (FastAPI's TestClient) on the real Postgres, Redis and S3, without uvicorn
    or a worker: the fast tier's way to test what the API answers."""
    from fastapi.testclient import TestClient

    from api.main import app

    with TestClient(app, headers=bearer(os.environ["DIFFQ_API_KEY"])) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def admin_api(api_client: "TestClient", admin_key: str) -> Iterator["TestClient"]:
    """`api_client` with an admin key: sees every owner's jobs and may name any storage key."""
    from fastapi.testclient import TestClient

    from api.main import app

    with TestClient(app, headers=bearer(admin_key)) as test_client:
        yield test_client


@pytest.fixture
def api(api_client: "TestClient") -> Iterator["TestClient"]:
    """`api_client` for one test; the jobs it got accepted are canceled after it, so that no later
    end-to-end test's worker spends its time on them."""
    yield api_client
    cancel_queued_jobs()


def cancel_queued_jobs() -> None:
    from sqlalchemy import update

    from core.db import db_session
    from core.tables import Job, JobStatus

    with db_session() as session:
        session.execute(update(Job).where(Job.status == JobStatus.QUEUED).values(status=JobStatus.CANCELED))
