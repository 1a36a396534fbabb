"""A background thread that calls something every few seconds until it is stopped."""

import logging
import threading
from collections.abc import Callable
from typing import Self

from core.db import DB_UNAVAILABLE
from core.errors import first_line

logger = logging.getLogger(__name__)


class Heartbeat:
    """Call `beat` every `interval_s` seconds from a daemon thread, until `stop()` (or the block's end,
    used as a context manager), or until `beat` returns False. An exception in `beat` is logged with
    `failure` and the beats go on."""

    def __init__(self, beat: Callable[[], bool | None], interval_s: float, name: str, failure: str) -> None:
        self.beat, self.interval_s, self.failure = beat, interval_s, failure
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; return once a beat under way has ended."""
        self.stopped.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                if self.beat() is False:
                    return
            except DB_UNAVAILABLE as error:  # an outage: one line a beat, not a traceback
                logger.warning("%s: the database is unreachable (%s)", self.failure, first_line(error))
            except Exception:
                logger.exception(self.failure)
