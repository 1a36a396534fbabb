"""`diffq beat`: Celery beat with diffq's periodic duties.

diffq's periodic work reads and writes the database (due schedules, expired leases), so it runs in
the beat process itself, each tick, rather than as tasks that would wait behind long GPU jobs.
Register a duty by adding it to `DUTIES`.

Beat also sends webhooks, from a dispatcher thread (core/webhooks.py) that runs beside the ticks, so a
slow receiver never delays a tick; `diffq beat --no-webhooks` leaves that to `diffq webhooks` processes.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celery.beat import Scheduler

from core.config import get_settings
from core.db import db_session
from core.reconcile import reconcile_once
from core.schedules import fire_due_schedules
from core.webhooks import Dispatcher

logger = logging.getLogger(__name__)

MAX_TICK_S = 1.0
# Whether this beat process runs a webhook dispatcher (`diffq beat --no-webhooks` sets it to False).
SEND_WEBHOOKS = True


@dataclass
class Duty:
    name: str
    every_s: Callable[[], float]
    run: Callable[[], object]
    last_run: float = field(default=float("-inf"))

    def run_if_due(self, now: float) -> None:
        if now - self.last_run < self.every_s():
            return
        self.last_run = now
        try:
            result = self.run()
            if result:
                logger.info("%s: %s", self.name, result)
        except Exception:
            logger.exception("%s failed; trying again next time", self.name)


def reconcile() -> object:
    with db_session() as session:
        return reconcile_once(session)


def fire_schedules() -> object:
    with db_session() as session:
        return fire_due_schedules(session)


DUTIES: list[Duty] = [
    Duty("reconcile", lambda: get_settings().reconcile_interval_s, reconcile),
    Duty("schedules", lambda: get_settings().schedule_interval_s, fire_schedules),
]


class DiffqScheduler(Scheduler):
    """Runs `DUTIES` on each tick, besides any Celery periodic tasks, and the webhook dispatcher."""

    def __init__(self, *args, lazy: bool = False, **kwargs) -> None:
        super().__init__(*args, lazy=lazy, **kwargs)
        self.webhooks: Dispatcher | None = None
        # Celery also makes lazy schedulers, to print their settings: those run nothing.
        if SEND_WEBHOOKS and not lazy:
            self.webhooks = Dispatcher()
            self.webhooks.start()
            logger.info("sending webhooks with %d threads", self.webhooks.threads)

    def close(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop(wait_s=get_settings().webhook_timeout_s)
        super().close()

    def tick(self, *args, **kwargs) -> float:
        now = time.monotonic()
        for duty in DUTIES:
            duty.run_if_due(now)
        return min(super().tick(*args, **kwargs), MAX_TICK_S)
