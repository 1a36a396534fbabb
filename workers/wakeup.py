"""An idle worker looks for its own work, so that every queued job runs while a worker that may claim it
is idle, whatever happened to the messages.

Wake-ups (core/queue.py) are how work usually reaches a worker at once, but a broker can lose them
(flushed, restarted without its data), a stray consumer can take them, and a batch sends fewer than it
has jobs. So, in the pool process that runs the jobs, a thread asks the jobs table every
`DIFFQ_IDLE_POLL_S`, while no task runs, whether there is a job this worker could claim, and if so sends
the worker a wake-up in its own direct queue. A worker that has started a task does the same at once
(`wake_self`), which is how one worker drains a queue: task after task, each running jobs for a few
seconds (workers/tasks.py).

One wake-up at a time: after sending one, the worker sends no other until a task has started, or until
`LOST_AFTER_POLLS` polls have passed without one (the message was lost).
"""

import logging
import threading
import time
from collections.abc import Callable

from celery.signals import task_postrun, task_prerun
from sqlalchemy.orm import Session

from core.config import get_settings
from core.db import db_session
from core.queue import send_wakeup
from core.scheduling import Claimer, direct_queue, work_for
from workers.heartbeat import Heartbeat

logger = logging.getLogger(__name__)

LOST_AFTER_POLLS = 10


class IdlePoll:
    def __init__(self) -> None:
        self.node: str | None = None
        self.claimer: Callable[[], Claimer] | None = None
        self.busy = False
        self.tasks_started = 0
        # (tasks started, monotonic time) when the last wake-up was sent, until a task starts after it.
        self.pending: tuple[int, float] | None = None
        self.heartbeat: Heartbeat | None = None
        self.lock = threading.Lock()

    def start(self, node: str, claimer: Callable[[], Claimer]) -> None:
        self.node, self.claimer = node, claimer
        interval = get_settings().idle_poll_s
        self.heartbeat = Heartbeat(
            self._poll,
            interval,
            name="diffq-idle-poll",
            failure=f"idle poll failed; trying again in {interval}s",
        ).start()

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def task_started(self) -> None:
        with self.lock:
            self.busy = True
            self.tasks_started += 1
            self.pending = None

    def task_ended(self) -> None:
        with self.lock:
            self.busy = False

    def wake_self(self, session: Session) -> bool:
        """Send this worker a wake-up if it could claim a job now and none is on its way; True if sent.
        Reads on `session` (the caller commits or closes it)."""
        if self.node is None or self.claimer is None:
            return False
        settings = get_settings()
        with self.lock:
            if self.pending is not None:
                tasks, sent_at = self.pending
                waited = time.monotonic() - sent_at
                if tasks == self.tasks_started and waited < LOST_AFTER_POLLS * settings.idle_poll_s:
                    return False
        job = work_for(session, self.claimer(), settings)
        if job is None:
            return False
        send_wakeup(direct_queue(self.node, settings), job)
        with self.lock:
            self.pending = (self.tasks_started, time.monotonic())
        return True

    def _poll(self) -> None:
        if self.busy:
            return
        with db_session() as session:  # the poll's thread has a session of its own
            if self.wake_self(session):
                logger.info("idle, and the jobs table holds work for this worker: woke it")


IDLE_POLL = IdlePoll()


@task_prerun.connect
def _task_started(**_: object) -> None:
    IDLE_POLL.task_started()


@task_postrun.connect
def _task_ended(**_: object) -> None:
    IDLE_POLL.task_ended()
