"""`diffq beat`: Celery beat with diffq's periodic duties.

diffq's periodic work reads and writes the database (due schedules, expired leases), so it runs in
the beat process itself, each tick, rather than as tasks that would wait behind long GPU jobs.
Register a duty by adding it to `DUTIES`.
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

logger = logging.getLogger(__name__)

MAX_TICK_S = 1.0


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
    """Runs `DUTIES` on each tick, besides any Celery periodic tasks."""

    def tick(self, *args, **kwargs) -> float:
        now = time.monotonic()
        for duty in DUTIES:
            duty.run_if_due(now)
        return min(super().tick(*args, **kwargs), MAX_TICK_S)
