"""Upgrading a database made before owners existed: its jobs, batches, schedules and models belong to
the `default` owner, which a key made with `diffq keys create --owner default` reaches."""

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_SERVER, TEST_DB


@pytest.fixture
def old_database() -> str:
    name = f"{TEST_DB}_before_owners"
    admin = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_jobs_made_before_owners_belong_to_default(old_database: str) -> None:
    from sqlalchemy.orm import Session

    from core.auth import authenticate
    from core.db import make_engine
    from core.tables import Job
    from migrations.run import upgrade

    upgrade("0005", old_database)
    job_id = uuid.uuid4()
    engine = create_engine(old_database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, type, model, params, status, outputs, attempts, created_at,"
                " updated_at, overwrite_output_model) VALUES (:id, 'text2img', 'tiny-sd', '{}',"
                " 'succeeded', '[]', 1, now(), now(), false)"
            ),
            {"id": job_id},
        )
    engine.dispose()
    upgrade("head", old_database)

    made = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--owner", "default"],
        env=os.environ | {"DIFFQ_DATABASE_URL": old_database},
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    engine = make_engine(old_database)
    with Session(engine) as session:
        principal = authenticate(session, key)
        job = session.get(Job, job_id)
        assert principal is not None and principal.owner == "default"
        assert job is not None and job.owner == "default" and job.priority == 0
        assert principal.may_see(job.owner) and not principal.is_admin
    engine.dispose()
