"""The job histograms are aggregated in SQL: the same numbers on Postgres and on SQLite."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from core.metrics import DURATION_BUCKETS, _histogram
from core.tables import Job, utcnow
from tests.utils.db import session_on

JOB_TYPE = "metrics_test"


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    with session_on(request, tmp_path) as session:
        yield session
        session.execute(delete(Job).where(Job.type == JOB_TYPE))
        session.commit()


def test_duration_histogram(session: Session) -> None:
    now = utcnow()
    for seconds in (2, 20, 200):
        session.add(
            Job(
                type=JOB_TYPE,
                model="m",
                params={},
                status="succeeded",
                created_at=now - timedelta(seconds=seconds + 5),
                started_at=now - timedelta(seconds=seconds),
                finished_at=now,
            )
        )
    session.add(
        Job(type=JOB_TYPE, model="m", params={}, status="queued", queue="diffq-test-unserved")
    )  # not started: not counted
    session.commit()

    family = _histogram(session, "d", "doc", Job.started_at, Job.finished_at, DURATION_BUCKETS)
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples if s.labels["type"] == JOB_TYPE}
    assert samples[("d_count", None)] == 3
    assert samples[("d_sum", None)] == pytest.approx(222, abs=0.01)
    assert samples[("d_bucket", "1.0")] == 0
    assert samples[("d_bucket", "2.5")] == 1
    assert samples[("d_bucket", "30.0")] == 2
    assert samples[("d_bucket", "300.0")] == 3
    assert samples[("d_bucket", "+Inf")] == 3
