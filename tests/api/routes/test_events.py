"""The SSE endpoints: replay from the start, resume after Last-Event-ID, end after the final event, fall
back to the database, owners only. Events are published as a worker publishes them (core/events.py)."""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from httpx_sse import connect_sse

from core.db import db_session
from core.events import JobEvents, get_event_store
from core.tables import Batch, Job, JobStatus
from tests.conftest import TEST_OWNER, bearer, new_key
from tests.utils.jobs import UNSERVED_QUEUE

OUTPUT = {"key": "jobs/x/0.png", "content_type": "image/png", "width": 64, "height": 64, "seed": 1}


def make_job(status: str = JobStatus.RUNNING, owner: str = TEST_OWNER, **values: Any) -> Job:
    with db_session() as session:
        job = Job(
            type="text2img", model="tiny-sd", params={"prompt": "p"}, status=status, owner=owner, **values
        )
        session.add(job)
    return job


def finish(job: Job, status: str = JobStatus.SUCCEEDED, **values: Any) -> Job:
    with db_session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.status = status
        for name, value in values.items():
            setattr(row, name, value)
    with db_session() as session:
        return session.get(Job, job.id)


def events(api, path: str, **headers: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of every event until the server ends the stream."""
    with connect_sse(api, "GET", path, headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        return [(sse.id, sse.event, json.loads(sse.data)) for sse in source.iter_sse()]


def run_steps(job: Job, steps: int) -> JobEvents:
    published = JobEvents(get_event_store(), job.id, job.batch_id, job.batch_index)
    published.status(JobStatus.RUNNING, worker="w", attempt=1)
    for step in range(1, steps + 1):
        published.step(
            {"step": step, "total": steps, "fraction": step / steps, "eta_s": 0.1, "steps_per_s": 9}
        )
    return published


@pytest.fixture
def recheck_fast() -> Iterator[None]:
    from core.config import get_settings

    settings = get_settings()
    before = settings.events_recheck_s
    settings.events_recheck_s = 0.2
    yield
    settings.events_recheck_s = before


def test_a_finished_jobs_stream_replays_from_the_start_and_ends(api) -> None:
    job = make_job()
    published = run_steps(job, 3)
    published.preview(2, b"jpeg", "image/jpeg")
    published.finished(finish(job, outputs=[OUTPUT], progress={"step": 3, "total": 3}))
    got = events(api, f"/v1/jobs/{job.id}/events")
    assert [(kind, data.get("status") or data.get("step")) for _, kind, data in got] == [
        ("status", "running"),
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("preview", 2),
        ("status", "succeeded"),
    ]
    ids = [event_id for event_id, _, _ in got]
    assert len(set(ids)) == len(ids) and all(ids)
    assert got[4][2]["url"].endswith(f"/v1/jobs/{job.id}/preview?step=2")
    final = got[-1][2]
    assert final["outputs"][0]["url"] and final["outputs"][0]["key"] == OUTPUT["key"]
    assert final["progress"] == {"step": 3, "total": 3}


def test_last_event_id_resumes_after_it(api) -> None:
    job = make_job()
    published = run_steps(job, 4)
    published.finished(finish(job))
    first = events(api, f"/v1/jobs/{job.id}/events")
    resumed = events(api, f"/v1/jobs/{job.id}/events", **{"Last-Event-ID": first[2][0]})
    assert resumed == first[3:]


def test_a_live_client_gets_each_step_as_it_is_published_and_the_stream_ends(api) -> None:
    job = make_job()

    def worker() -> None:
        time.sleep(0.3)
        published = run_steps(job, 5)
        time.sleep(0.2)
        published.finished(finish(job))

    thread = threading.Thread(target=worker)
    thread.start()
    got = events(api, f"/v1/jobs/{job.id}/events")
    thread.join()
    assert [kind for _, kind, _ in got] == ["status"] + ["progress"] * 5 + ["status"]
    assert got[-1][2]["status"] == "succeeded"


def test_a_job_without_a_stream_gets_its_final_state_from_the_database(api) -> None:
    """A job that ended before streams existed, or whose stream expired."""
    job = make_job(JobStatus.FAILED, error={"code": "bad_input", "message": "no"}, progress={"step": 2})
    got = events(api, f"/v1/jobs/{job.id}/events")
    assert len(got) == 1
    _, kind, data = got[0]
    assert kind == "status" and data["status"] == "failed"
    assert data["error"] == {"code": "bad_input", "message": "no"} and data["progress"] == {"step": 2}


def test_a_stream_that_misses_its_final_event_ends_from_the_database(api, recheck_fast) -> None:
    """The reconciler fails a job whose worker died: nobody publishes its end."""
    job = make_job()
    run_steps(job, 2)
    threading.Timer(
        0.5, finish, (job, JobStatus.FAILED), {"error": {"code": "worker_lost", "message": "m"}}
    ).start()
    got = events(api, f"/v1/jobs/{job.id}/events")
    assert [kind for _, kind, _ in got] == ["status", "progress", "progress", "status"]
    assert got[-1][2]["status"] == "failed" and got[-1][2]["error"]["code"] == "worker_lost"
    assert got[-1][0] == got[-2][0]  # resuming after it loses nothing


def test_canceling_a_running_job_ends_its_stream_and_raises_its_cancel_flag(api) -> None:
    job = make_job()
    published = run_steps(job, 2)
    assert published.step({"step": 3}) is False
    assert api.post(f"/v1/jobs/{job.id}/cancel").status_code == 200
    assert published.step({"step": 4}) is True  # the worker's next step sees it, without Postgres
    got = events(api, f"/v1/jobs/{job.id}/events")
    assert got[-1][1:] == ("status", {"status": "canceled", "ts": got[-1][2]["ts"]})


def test_another_owners_stream_is_a_404_and_a_bad_id_a_400(api) -> None:
    job = make_job(JobStatus.SUCCEEDED, owner="someone-else")
    assert api.get(f"/v1/jobs/{job.id}/events").status_code == 404
    mine = make_job(JobStatus.SUCCEEDED)
    response = api.get(f"/v1/jobs/{mine.id}/events", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 400 and "reconnect without it" in response.json()["detail"]
    other = bearer(new_key("someone-else"))
    response = api.get(f"/v1/jobs/{job.id}/events", headers=other)
    assert response.status_code == 200
    assert api.get(f"/v1/jobs/{uuid.uuid4()}/events").status_code == 404


def test_a_preview_is_served_to_its_owner(api) -> None:
    job = make_job()
    JobEvents(get_event_store(), job.id).preview(7, b"\xff\xd8jpeg", "image/jpeg")
    response = api.get(f"/v1/jobs/{job.id}/preview")
    assert response.status_code == 200 and response.content == b"\xff\xd8jpeg"
    assert response.headers["content-type"] == "image/jpeg" and response.headers["x-preview-step"] == "7"
    assert "preview_every" in api.get(f"/v1/jobs/{make_job().id}/preview").json()["detail"]
    other = make_job(owner="someone-else")
    JobEvents(get_event_store(), other.id).preview(1, b"x", "image/jpeg")
    assert api.get(f"/v1/jobs/{other.id}/preview").status_code == 404


def make_batch(size: int) -> tuple[Batch, list[Job]]:
    with db_session() as session:
        batch = Batch(total=size, source={"source": "jobs"}, owner=TEST_OWNER)
        session.add(batch)
        session.flush()
        jobs = [
            Job(
                type="text2img",
                model="tiny-sd",
                params={},
                status=JobStatus.QUEUED,
                queue=UNSERVED_QUEUE,
                owner=TEST_OWNER,
                batch_id=batch.id,
                batch_index=index,
            )
            for index in range(size)
        ]
        session.add_all(jobs)
    return batch, jobs


def test_a_batch_stream_has_its_jobs_status_changes_and_ends_when_it_is_done(api, recheck_fast) -> None:
    batch, jobs = make_batch(2)

    def worker() -> None:
        for job in jobs:
            time.sleep(0.2)
            finish(job, JobStatus.RUNNING)
            published = run_steps(job, 2)
            published.finished(finish(job, outputs=[OUTPUT]))

    thread = threading.Thread(target=worker)
    thread.start()
    got = events(api, f"/v1/batches/{batch.id}/events")
    thread.join()
    job_events = [(data["batch_index"], data["status"]) for _, kind, data in got if kind == "job"]
    assert job_events == [(0, "running"), (0, "succeeded"), (1, "running"), (1, "succeeded")]
    # Its running jobs' steps too (the last step of each always)
    assert {(data["batch_index"], data["step"]) for _, kind, data in got if kind == "progress"} >= {
        (0, 2),
        (1, 2),
    }
    assert all(
        data["outputs"][0]["url"] for _, kind, data in got if kind == "job" and data["status"] == "succeeded"
    )
    last_id, kind, counts = got[-1]
    assert kind == "counts" and counts["done"] and counts["counts"]["succeeded"] == 2
    # `counts` events carry no id of their own: a client resuming after one resumes after the last `job`
    assert counts["status"] == "succeeded" and last_id == [i for i, kind, _ in got if kind == "job"][-1]
    second_job_event = [event_id for event_id, kind, _ in got if kind == "job"][1]
    resumed = events(api, f"/v1/batches/{batch.id}/events", **{"Last-Event-ID": second_job_event})
    assert [
        (data["batch_index"], data["status"]) for _, kind, data in resumed if kind == "job"
    ] == job_events[2:]


def test_canceling_a_batch_ends_its_stream(api, recheck_fast) -> None:
    batch, jobs = make_batch(3)
    finish(jobs[0], JobStatus.RUNNING)
    published = run_steps(jobs[0], 1)
    assert api.post(f"/v1/batches/{batch.id}/cancel").status_code == 200
    assert published.step({"step": 2}) is True
    got = events(api, f"/v1/batches/{batch.id}/events")
    assert ("job", 0, "canceled") in [
        (kind, data.get("batch_index"), data.get("status")) for _, kind, data in got
    ]
    assert got[-1][1] == "counts" and got[-1][2]["counts"]["canceled"] == 3 and got[-1][2]["done"]


def test_the_table_backed_store_serves_the_same_streams(api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded defaults' store (no Redis): the same endpoint, its readers polling the table."""
    from core.config import get_settings
    from core.events import DatabaseEventStore

    store = DatabaseEventStore(get_settings())
    monkeypatch.setattr("api.routes.events.get_event_store", lambda: store)
    job = make_job()

    def worker() -> None:
        time.sleep(0.3)
        published = JobEvents(store, job.id)
        published.status(JobStatus.RUNNING, worker="w", attempt=1)
        for step in range(1, 4):
            published.step({"step": step, "total": 3})
        published.finished(finish(job))

    thread = threading.Thread(target=worker)
    thread.start()
    got = events(api, f"/v1/jobs/{job.id}/events")
    thread.join()
    assert [(kind, data.get("status") or data.get("step")) for _, kind, data in got] == [
        ("status", "running"),
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("status", "succeeded"),
    ]
    ids = [int(event_id) for event_id, _, _ in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events(api, f"/v1/jobs/{job.id}/events", **{"Last-Event-ID": got[1][0]}) == got[2:]


def test_streams_that_recheck_together_hold_a_few_database_connections(api, recheck_fast) -> None:
    """30 clients of jobs that publish nothing: each rechecks its job every 0.2 s, all on the
    RECHECK_THREADS threads, so that no more connections than those are checked out at once."""
    from sqlalchemy import event

    from api.routes.events import RECHECK_THREADS
    from core.db import get_engine

    jobs = [make_job() for _ in range(30)]
    lock = threading.Lock()
    state = {"out": 0, "most": 0, "checkouts": 0}

    def checkout(*_: object) -> None:
        with lock:
            state["out"] += 1
            state["checkouts"] += 1
            state["most"] = max(state["most"], state["out"])

    def checkin(*_: object) -> None:
        with lock:
            state["out"] -= 1

    engine = get_engine()
    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    got: dict[uuid.UUID, list] = {}
    try:
        clients = [
            threading.Thread(
                target=lambda job=job: got.update({job.id: events(api, f"/v1/jobs/{job.id}/events")})
            )
            for job in jobs
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 20
        while state["checkouts"] < 30 and time.monotonic() < deadline:  # every key checked
            time.sleep(0.05)
        time.sleep(0.3)
        with lock:
            state["most"], state["checkouts"] = state["out"], 0
        time.sleep(1)  # about five rounds of rechecks
        with lock:
            most, rechecks = state["most"], state["checkouts"]
        for job in jobs:
            finish(job)
        for client in clients:
            client.join(20)
    finally:
        event.remove(engine, "checkout", checkout)
        event.remove(engine, "checkin", checkin)
    assert rechecks >= 30
    assert most <= RECHECK_THREADS
    assert all(got[job.id][-1][2]["status"] == "succeeded" for job in jobs)
