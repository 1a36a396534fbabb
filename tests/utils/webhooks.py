"""A real webhook receiver for tests, and helpers to run the dispatcher in-process."""

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import delete, select
from standardwebhooks import Webhook, WebhookVerificationError

from cli.quickstart import free_port
from core.db import db_session
from core.specs import JOB_SPEC
from core.submit import job_from_spec
from core.tables import Job, JobStatus, WebhookAttempt, WebhookDelivery
from core.webhooks import Dispatcher
from tests.conftest import TEST_OWNER
from tests.utils.jobs import UNSERVED_QUEUE, text2img_spec


@dataclass
class Received:
    id: str
    event: str
    body: dict[str, Any]


class Receiver:
    """An HTTP server on a loopback port, in a thread, that verifies every request with standardwebhooks'
    `Webhook(secret).verify` and answers each with the next of `answers` (200 once they run out); an
    unverified request is answered 401 and counted in `refused`. While `hold` is set to an unset event,
    every request waits for it before answering."""

    def __init__(
        self, secret: str, answers: list[int] | None = None, port: int | None = None, hold: Any = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.answers = list(answers or [])
        self.received: list[Received] = []
        self.refused: list[str] = []
        self.arrived = threading.Event()
        self.hold: threading.Event | None = hold
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.secret = secret

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length", 0)))
        headers = dict(handler.headers.items())
        self.arrived.set()
        if self.hold is not None:
            self.hold.wait(30)
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as error:
            with self._lock:
                self.refused.append(str(error))
            code = 401
        else:
            with self._lock:
                self.received.append(Received(headers["webhook-id"], headers.get("diffq-event", ""), payload))
                code = self.answers.pop(0) if self.answers else 200
        handler.send_response(code)
        answer = json.dumps({"answer": code}).encode()
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        # A short poll: stopping waits for the next one (0.5 s by default, at every receiver's end).
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[str]:
        with self._lock:
            return [received.event for received in self.received]

    def of(self, event: str) -> list[Received]:
        with self._lock:
            return [received for received in self.received if received.event == event]


@contextmanager
def receiving(secret: str, **kwargs: Any) -> Iterator[Receiver]:
    receiver = Receiver(secret, **kwargs).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def new_job(url: str, events: list[str] | None = None) -> uuid.UUID:
    """A queued job (not sent to any broker) whose webhook is `url`."""
    webhook = {"url": url} | ({"events": events} if events else {})
    with db_session() as session:
        job = job_from_spec(JOB_SPEC.validate_python(text2img_spec() | {"webhook": webhook}), TEST_OWNER)
        job.queue = UNSERVED_QUEUE  # run in-process by the tests, never by a worker
        session.add(job)
    return job.id


def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings for tests: loopback receivers allowed, retries after a few milliseconds."""
    from core.config import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings, "webhook_allow_private", True)
    monkeypatch.setattr(settings, "webhook_backoff_s", 0.01)
    monkeypatch.setattr(settings, "webhook_backoff_max_s", 0.05)
    monkeypatch.setattr(settings, "webhook_timeout_s", 5.0)
    monkeypatch.setattr(settings, "webhook_poll_s", 0.02)


def forget_deliveries() -> None:
    """Delete every delivery, so that no test's leftovers are sent during another, and the jobs these
    tests claimed in-process and left running (they would count as running in later tests' metrics)."""
    with db_session() as session:
        session.execute(delete(WebhookAttempt))
        session.execute(delete(WebhookDelivery))
        session.execute(
            delete(Job).where(
                Job.queue == UNSERVED_QUEUE, Job.status == JobStatus.RUNNING, Job.webhook.is_not(None)
            )
        )


def dispatch_until(dispatcher: Dispatcher, done: Callable[[], bool], timeout: float = 30) -> None:
    """Run dispatch rounds (claim what is due, wait for those attempts) until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout} s of dispatching: {delivery_rows()}")
        if not dispatcher.dispatch_once():
            time.sleep(0.01)
        dispatcher.wait_idle(timeout)


def delivery_rows(*conditions: Any) -> list[WebhookDelivery]:
    with db_session() as session:
        return list(
            session.scalars(select(WebhookDelivery).where(*conditions).order_by(WebhookDelivery.created_at))
        )


def attempt_codes(delivery_id: str) -> list[int | None]:
    with db_session() as session:
        return list(
            session.scalars(
                select(WebhookAttempt.status_code)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
        )
