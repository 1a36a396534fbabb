"""Webhooks end to end: a job submitted over HTTP with a webhook runs on a real worker, which records
its events; the dispatcher sends them, signed, to a receiver that verifies them."""

import time

import pytest

from core.auth import webhook_secret
from core.webhooks import Dispatcher
from tests.utils.db import in_session
from tests.utils.jobs import text2img_spec, wait_finished
from tests.utils.webhooks import Receiver, fast_retries, forget_deliveries


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch):
    fast_retries(monkeypatch)  # the API runs in this process: loopback receivers are allowed
    forget_deliveries()
    dispatcher = Dispatcher(threads=2)
    yield dispatcher
    dispatcher.stop(wait_s=10)
    forget_deliveries()


def test_a_job_run_by_a_worker_sends_started_and_succeeded(client, dispatcher) -> None:
    receiver = Receiver(secret="")
    spec = text2img_spec(num_inference_steps=2, num_images=1) | {"webhook": {"url": receiver.url}}
    job = client.submit(spec)
    # Signed with the secret of whoever owns the job (the API key's owner once keys are required).
    receiver.secret = in_session(webhook_secret, job["owner"])
    receiver.start()
    dispatcher.start()
    try:
        finished = wait_finished(client, job["id"])
        deadline = time.monotonic() + 60
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        receiver.stop()

    assert finished["status"] == "succeeded"
    assert receiver.refused == [] and sorted(receiver.events()) == ["job.started", "job.succeeded"]
    (started,) = receiver.of("job.started")
    (succeeded,) = receiver.of("job.succeeded")
    assert started.body["status"] == "running" and started.body["worker"] == finished["worker"]
    assert (
        succeeded.body["status"] == "succeeded" and succeeded.body["finished_at"] == finished["finished_at"]
    )
    assert [output["key"] for output in succeeded.body["outputs"]] == [f"jobs/{job['id']}/0.png"]
    listed = client.http.get(f"/v1/jobs/{job['id']}/webhooks").json()
    assert sorted(d["status"] for d in listed["data"]) == ["delivered", "delivered"]
