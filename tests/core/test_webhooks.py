"""Webhooks from the outbox: each job state change records its delivery, and the dispatcher (run here
in-process) signs and sends it to a real receiver on a loopback port, which verifies it with
standardwebhooks."""

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from core.auth import webhook_secret
from core.batches import insert_batch
from core.db import db_session
from core.jobs import cancel_jobs, finish_job
from core.specs import JOB_SPEC, BatchWebhook
from core.submit import job_fields
from core.tables import Job, WebhookAttempt, WebhookDelivery
from core.webhooks import BATCH_COMPLETED, Dispatcher, claim_due
from tests.conftest import TEST_OWNER
from tests.utils.db import in_session
from tests.utils.jobs import UNSERVED_QUEUE, claim_job, text2img_spec
from tests.utils.webhooks import (
    Receiver,
    attempt_codes,
    delivery_rows,
    dispatch_until,
    fast_retries,
    forget_deliveries,
    new_job,
    receiving,
)


@pytest.fixture
def secret(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    fast_retries(monkeypatch)
    forget_deliveries()
    yield in_session(webhook_secret, TEST_OWNER)
    forget_deliveries()


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(threads=4)
    yield dispatcher
    dispatcher.stop(wait_s=10)


def run_to(job_id: uuid.UUID, status: str) -> None:
    """Claim the job and end it with `status`, as a worker does (each change committed)."""
    assert in_session(claim_job, job_id, "w1") is not None
    assert in_session(finish_job, job_id, 1, status, outputs=[])


def test_each_event_is_signed_and_carries_the_job_as_the_api_shows_it(
    secret, dispatcher, api, monkeypatch
) -> None:
    from core.config import get_settings

    # The API's TestClient answers as http://testserver; deliveries render links from DIFFQ_PUBLIC_URL.
    monkeypatch.setattr(get_settings(), "public_url", "http://testserver/")
    with receiving(secret) as receiver:
        job_id = new_job(receiver.url)
        run_to(job_id, "succeeded")
        dispatch_until(dispatcher, lambda: len(receiver.received) == 2)

    assert receiver.refused == []
    assert sorted(receiver.events()) == ["job.started", "job.succeeded"]
    (started,) = receiver.of("job.started")
    (succeeded,) = receiver.of("job.succeeded")
    assert started.body["status"] == "running" and started.body["id"] == str(job_id)
    assert succeeded.body == api.get(f"/v1/jobs/{job_id}").json()
    assert succeeded.body["webhook"]["url"] == receiver.url and succeeded.body["owner"] == TEST_OWNER

    listed = api.get(f"/v1/jobs/{job_id}/webhooks").json()
    assert listed["count"] == 2
    assert {d["id"] for d in listed["data"]} == {started.id, succeeded.id}
    assert all(
        d["status"] == "delivered" and [a["status_code"] for a in d["attempts"]] == [200]
        for d in listed["data"]
    )


def test_only_the_events_asked_for_are_recorded(secret) -> None:
    job_id = new_job("http://127.0.0.1:9/hooks", events=["failed"])
    run_to(job_id, "succeeded")
    assert delivery_rows(WebhookDelivery.job_id == job_id) == []
    other = new_job("http://127.0.0.1:9/hooks", events=["failed"])
    run_to(other, "failed")
    assert [d.event for d in delivery_rows(WebhookDelivery.job_id == other)] == ["job.failed"]


def test_a_state_change_rolled_back_records_no_delivery(secret) -> None:
    job_id = new_job("http://127.0.0.1:9/hooks")
    with db_session() as session:
        assert claim_job(session, job_id, "w1") is not None
        assert session.scalar(select(func.count()).where(WebhookDelivery.job_id == job_id)) == 1
        session.rollback()
    assert delivery_rows(WebhookDelivery.job_id == job_id) == []


def test_retries_carry_the_same_webhook_id(secret, dispatcher) -> None:
    with receiving(secret, answers=[500, 500]) as receiver:
        job_id = new_job(receiver.url, events=["succeeded"])
        run_to(job_id, "succeeded")
        dispatch_until(
            dispatcher, lambda: delivery_rows(WebhookDelivery.job_id == job_id)[0].status != "pending"
        )

    (delivery,) = delivery_rows(WebhookDelivery.job_id == job_id)
    assert delivery.status == "delivered" and delivery.attempts == 3
    assert attempt_codes(delivery.id) == [500, 500, 200]
    assert [received.id for received in receiver.received] == [delivery.id] * 3
    assert receiver.refused == []


def test_a_receiver_that_is_down_gets_the_delivery_once_it_is_up(secret, dispatcher) -> None:
    receiver = Receiver(secret)  # its port is not listening yet
    job_id = new_job(receiver.url, events=["started"])
    assert in_session(claim_job, job_id, "w1") is not None
    (delivery,) = delivery_rows(WebhookDelivery.job_id == job_id)
    dispatch_until(dispatcher, lambda: len(attempt_codes(delivery.id)) >= 2)
    assert attempt_codes(delivery.id)[:2] == [None, None]  # connection refused, no answer

    receiver.start()
    try:
        dispatch_until(
            dispatcher, lambda: delivery_rows(WebhookDelivery.id == delivery.id)[0].status != "pending"
        )
    finally:
        receiver.stop()
    assert delivery_rows(WebhookDelivery.id == delivery.id)[0].status == "delivered"
    assert [received.id for received in receiver.received] == [delivery.id]


def test_410_stops_the_retries(secret, dispatcher) -> None:
    with receiving(secret, answers=[410, 500]) as receiver:
        job_id = new_job(receiver.url, events=["started"])
        in_session(claim_job, job_id, "w1")
        dispatch_until(
            dispatcher, lambda: delivery_rows(WebhookDelivery.job_id == job_id)[0].status != "pending"
        )
        assert in_session(claim_due, 100) == []  # nothing left to send

    (delivery,) = delivery_rows(WebhookDelivery.job_id == job_id)
    assert delivery.status == "gone" and attempt_codes(delivery.id) == [410]
    assert len(receiver.received) == 1


def test_a_delivery_is_given_up_after_the_retry_time(secret, dispatcher, monkeypatch) -> None:
    from core.config import get_settings

    monkeypatch.setattr(get_settings(), "webhook_retry_s", 0.3)
    with receiving(secret, answers=[500] * 1000) as receiver:
        job_id = new_job(receiver.url, events=["started"])
        in_session(claim_job, job_id, "w1")
        dispatch_until(
            dispatcher, lambda: delivery_rows(WebhookDelivery.job_id == job_id)[0].status != "pending"
        )

    (delivery,) = delivery_rows(WebhookDelivery.job_id == job_id)
    assert delivery.status == "failed" and delivery.finished_at is not None
    assert set(attempt_codes(delivery.id)) == {500}


def test_the_address_is_checked_again_when_sending(secret, dispatcher, monkeypatch) -> None:
    from core.config import get_settings

    with receiving(secret) as receiver:
        job_id = new_job(receiver.url, events=["started"])  # allowed when it was submitted
        in_session(claim_job, job_id, "w1")
        monkeypatch.setattr(get_settings(), "webhook_allow_private", False)
        (delivery,) = delivery_rows(WebhookDelivery.job_id == job_id)
        dispatch_until(dispatcher, lambda: len(attempt_codes(delivery.id)) >= 1)
    assert receiver.received == [] and receiver.refused == []
    assert delivery_rows(WebhookDelivery.id == delivery.id)[0].status == "pending"  # DNS may change back
    with db_session() as session:
        message = session.scalar(
            select(WebhookAttempt.error).where(WebhookAttempt.delivery_id == delivery.id)
        )
    assert "127.0.0.1, a loopback address" in message and "DIFFQ_WEBHOOK_ALLOW_PRIVATE=true" in message


def test_a_hanging_receiver_delays_no_other_receiver(secret, monkeypatch) -> None:
    from core.config import get_settings

    # Longer than the test waits: the healthy receiver must not wait for the hanging one's timeouts.
    monkeypatch.setattr(get_settings(), "webhook_timeout_s", 60)
    release = threading.Event()
    dispatcher = Dispatcher(threads=3)
    with receiving(secret, hold=release) as hanging, receiving(secret) as healthy:
        try:
            for _ in range(3):  # more than a URL may have in flight
                in_session(claim_job, new_job(hanging.url, events=["started"]), "w1")
            in_session(claim_job, new_job(healthy.url, events=["started"]), "w1")
            dispatcher.start()
            # The healthy receiver gets its delivery while the hanging one holds the requests it got.
            assert healthy.arrived.wait(30)
            assert hanging.arrived.wait(30) and hanging.received == []
            assert healthy.events() == ["job.started"] and hanging.received == []
        finally:
            release.set()
            dispatcher.stop(wait_s=30)


def test_two_dispatchers_send_each_delivery_once(secret) -> None:
    first, second = Dispatcher(threads=4), Dispatcher(threads=4)
    with receiving(secret) as receiver:
        job_ids = [new_job(receiver.url, events=["started"]) for _ in range(12)]
        for job_id in job_ids:
            in_session(claim_job, job_id, "w1")
        first.start()
        second.start()
        try:
            dispatch_until(Dispatcher(threads=1), lambda: len(receiver.received) >= 12)
        finally:
            first.stop(wait_s=30)
            second.stop(wait_s=30)
    ids = [received.id for received in receiver.received]
    assert len(ids) == len(set(ids)) == 12
    assert all(
        d.status == "delivered" and d.attempts == 1
        for d in delivery_rows(WebhookDelivery.job_id.in_(job_ids))
    )


def new_batch(url: str, size: int, events: list[str]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    jobs = [
        job_fields(JOB_SPEC.validate_python(text2img_spec(seed=i))) | {"queue": UNSERVED_QUEUE}
        for i in range(size)
    ]
    with db_session() as session:
        return insert_batch(
            session, "hooks", {"source": "jobs"}, jobs, TEST_OWNER, BatchWebhook(url=url, events=events)
        )


def test_batch_completed_is_recorded_once_when_its_last_jobs_end_together(
    secret, dispatcher, api, monkeypatch
) -> None:
    from core.config import get_settings

    monkeypatch.setattr(get_settings(), "public_url", "http://testserver/")
    with receiving(secret) as receiver:
        batch_id, job_ids = new_batch(receiver.url, 6, ["completed", "succeeded"])
        for job_id in job_ids:
            in_session(claim_job, job_id, "w1")
        start = threading.Barrier(len(job_ids))
        errors: list[BaseException] = []

        def finish(job_id: uuid.UUID) -> None:
            try:
                start.wait(30)
                assert in_session(finish_job, job_id, 1, "succeeded", outputs=[])
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        threads = [threading.Thread(target=finish, args=(job_id,)) for job_id in job_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        completed = delivery_rows(WebhookDelivery.batch_id == batch_id)
        assert [d.event for d in completed] == [BATCH_COMPLETED]
        # The jobs have the batch's job events, as webhooks of their own.
        assert (
            len(delivery_rows(WebhookDelivery.job_id.in_(job_ids), WebhookDelivery.event == "job.succeeded"))
            == 6
        )
        dispatch_until(dispatcher, lambda: len(receiver.received) == 7)

    (batch_event,) = receiver.of(BATCH_COMPLETED)
    assert batch_event.body == api.get(f"/v1/batches/{batch_id}").json()
    assert batch_event.body["status"] == "succeeded" and batch_event.body["done"] is True
    assert batch_event.body["webhook"] == {"url": receiver.url, "events": ["completed", "succeeded"]}
    assert [d["event"] for d in api.get(f"/v1/batches/{batch_id}/webhooks").json()["data"]] == [
        BATCH_COMPLETED
    ]


def test_canceling_the_rest_of_a_batch_completes_it(secret) -> None:
    batch_id, job_ids = new_batch("http://127.0.0.1:9/hooks", 3, ["completed"])
    run_to(job_ids[0], "failed")
    assert delivery_rows(WebhookDelivery.batch_id == batch_id) == []  # two jobs still to go
    assert in_session(cancel_jobs, Job.batch_id == batch_id) == 2
    (completed,) = delivery_rows(WebhookDelivery.batch_id == batch_id)
    assert completed.event == BATCH_COMPLETED and '"status":"failed"' in completed.payload
    assert delivery_rows(WebhookDelivery.job_id.in_(job_ids)) == []  # the batch asked for no job events


def test_ended_deliveries_are_deleted_after_they_were_kept_long_enough(secret, dispatcher) -> None:
    from datetime import timedelta

    from core.tables import utcnow
    from core.webhooks import purge_ended

    with receiving(secret) as receiver:
        delivered = new_job(receiver.url, events=["started"])
        in_session(claim_job, delivered, "w1")
        dispatch_until(
            dispatcher, lambda: delivery_rows(WebhookDelivery.job_id == delivered)[0].status == "delivered"
        )
    pending = new_job(Receiver(secret).url, events=["started"])  # nobody listens: it stays pending
    in_session(claim_job, pending, "w1")
    [sent] = delivery_rows(WebhookDelivery.job_id == delivered)
    later = sent.finished_at + timedelta(hours=1)

    assert in_session(purge_ended, 2 * 3600, now=later) == 0  # kept for two hours: not yet
    assert in_session(purge_ended, 1800, now=later) == 1
    assert delivery_rows(WebhookDelivery.job_id == delivered) == []
    assert attempt_codes(sent.id) == []
    assert [row.status for row in delivery_rows(WebhookDelivery.job_id == pending)] == ["pending"]
    assert in_session(purge_ended, 0, now=utcnow() + timedelta(days=365)) == 0  # pending: never deleted
