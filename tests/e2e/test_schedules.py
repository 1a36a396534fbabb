"""Schedules over HTTP, and the beat that turns them into jobs: once per due time, even with two beats."""

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core.db import db_session
from core.schedules import fire_due_schedules
from core.tables import Job, Schedule
from tests.utils.db import in_session
from tests.utils.jobs import wait_finished
from tests.utils.services import ROOT, wait_for

GENERATION = {
    "type": "unconditional",
    "model": "tiny-ddpm",
    "params": {"num_inference_steps": 2, "num_images": 1},
}


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def post(client, body: dict):
    return client.http.post("/v1/schedules", json=body)


def jobs_of(client, schedule_id: str) -> list[dict]:
    return client.http.get("/v1/jobs", params={"schedule_id": schedule_id}).json()["data"]


def test_schedule_crud(client) -> None:
    created = post(
        client, {"name": "hourly", "job": GENERATION, "cron": "0 * * * *", "timezone": "Europe/Paris"}
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run > datetime.now(UTC) and next_run.minute == 0
    assert schedule["enabled"] and schedule["job"]["params"]["num_inference_steps"] == 2

    assert client.http.get(f"/v1/schedules/{schedule['id']}").json() == schedule
    assert schedule["id"] in [s["id"] for s in client.http.get("/v1/schedules").json()["data"]]

    paused = client.http.patch(f"/v1/schedules/{schedule['id']}", json={"enabled": False})
    assert paused.status_code == 200 and paused.json()["enabled"] is False
    one_off = client.http.patch(f"/v1/schedules/{schedule['id']}", json={"run_at": soon(3600)}).json()
    assert one_off["cron"] is None and one_off["next_run_at"] == one_off["run_at"]
    bad = client.http.patch(f"/v1/schedules/{schedule['id']}", json={"cron": "every day"})
    assert bad.status_code == 422 and "not a cron expression" in bad.text

    assert client.http.delete(f"/v1/schedules/{schedule['id']}").status_code == 204
    assert client.http.get(f"/v1/schedules/{schedule['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"job": GENERATION}, "give exactly one of cron"),
        ({"job": GENERATION, "cron": "0 3 * * *", "run_at": soon(60)}, "give exactly one of cron"),
        ({"job": GENERATION, "cron": "61 * * * *"}, "not a cron expression"),
        ({"job": GENERATION, "cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"job": GENERATION, "run_at": "2030-01-01T09:00:00"}, "timezone"),
        ({"job": GENERATION, "run_at": soon(-60)}, "is in the past"),
        ({"job": GENERATION | {"model": "nope"}, "run_at": soon(60)}, "not found in the models dir"),
        (
            {"job": GENERATION | {"params": {"num_inference_steps": 0}}, "run_at": soon(60)},
            "greater than or equal",
        ),
        (
            {
                "cron": "0 3 * * *",
                "job": {
                    "type": "train_unconditional",
                    "output_model": "nightly",
                    "params": {"dataset": "builtin:glyphs"},
                },
            },
            "overwrite_output_model: true",
        ),
    ],
)
def test_bad_schedules_are_422(client, body, words) -> None:
    response = post(client, body)
    assert response.status_code == 422, response.text
    assert words in response.text


def test_two_beats_in_one_process_make_one_job(client) -> None:
    schedule = post(client, {"job": GENERATION, "run_at": soon(3600)}).json()
    due = datetime.now(UTC) + timedelta(hours=2)
    start = threading.Barrier(4)
    results: list[dict] = []

    def beat() -> None:
        start.wait()
        results.append(in_session(fire_due_schedules, now=due))

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result.get("fired", 0) for result in results) >= 1
    with db_session() as session:
        made = session.scalars(select(Job).where(Job.schedule_id == uuid.UUID(schedule["id"]))).all()
        assert session.get_one(Schedule, uuid.UUID(schedule["id"])).next_run_at is None
    assert len(made) == 1 and made[0].scheduled_for is not None
    # Renaming a fired single run does not make it due again.
    renamed = client.http.patch(f"/v1/schedules/{schedule['id']}", json={"name": "fired"}).json()
    assert renamed["name"] == "fired" and renamed["next_run_at"] is None
    wait_finished(client, str(made[0].id))


def test_cron_schedule_fires_a_missed_time_once_then_moves_on(client) -> None:
    schedule = post(client, {"job": GENERATION, "cron": "*/5 * * * *"}).json()
    first_due = datetime.fromisoformat(schedule["next_run_at"])
    three_hours_late = first_due + timedelta(hours=3, seconds=1)
    # Other tests' schedules may be due at that time too: count this schedule's jobs, not all fired.
    assert in_session(fire_due_schedules, now=three_hours_late).get("fired", 0) >= 1
    assert len(jobs_of(client, schedule["id"])) == 1
    in_session(fire_due_schedules, now=three_hours_late)
    after = client.http.get(f"/v1/schedules/{schedule['id']}").json()
    assert datetime.fromisoformat(after["next_run_at"]) == first_due + timedelta(hours=3, minutes=5)
    [job] = jobs_of(client, schedule["id"])
    assert datetime.fromisoformat(job["scheduled_for"]) == first_due
    client.http.delete(f"/v1/schedules/{schedule['id']}")
    wait_finished(client, job["id"])


@pytest.fixture
def two_beats(stack):
    """Two `diffq beat` processes, as if started twice by mistake; each in a folder of its own for its
    schedule file."""
    beats = []
    for index in range(2):
        folder = stack.tmp / f"beat-{index}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        log = (folder / "beat.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "beat", "--loglevel", "INFO"],
            cwd=folder,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        beats.append((process, folder / "beat.log", log))
    try:  # stop the beats even when one fails to start
        for process, log_path, _ in beats:
            wait_for(
                lambda p=process, path=log_path: "beat: Starting" in path.read_text() or p.poll(), 60, "beat"
            )
            assert process.poll() is None, log_path.read_text()
        yield beats
    finally:
        for process, _, log in beats:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def test_run_at_makes_exactly_one_job_with_two_beats(client, two_beats) -> None:
    due = datetime.now(UTC) + timedelta(seconds=3)
    created = post(
        client, {"name": "once", "job": GENERATION | {"params": {"seed": 5}}, "run_at": due.isoformat()}
    )
    schedule = created.json()
    assert created.status_code == 201, created.text
    [job] = wait_for(lambda: jobs_of(client, schedule["id"]), 60, "the scheduled job")
    done = wait_finished(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["schedule_id"] == schedule["id"] and done["scheduled_for"] is not None
    assert done["params"]["seed"] == 5
    # Both beats tick at least once a second: by now each has seen the schedule due more than once.
    wait_for(lambda: datetime.now(UTC) > due + timedelta(seconds=3), 10, "a few ticks past the due time")
    assert all(process.poll() is None for process, _, _ in two_beats)
    assert len(jobs_of(client, schedule["id"])) == 1
    after = client.http.get(f"/v1/schedules/{schedule['id']}").json()
    assert after["next_run_at"] is None and after["last_run_at"] is not None
