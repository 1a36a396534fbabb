"""Imported first by a test worker to record, and hold, the storing of outputs (workers/finisher.py).

Each line of `DIFFQ_TEST_FINISH_LOG` is `<what> <job id> <attempt>`, in the order the worker did it:
`denoise` when a job's run starts its progress (right before its pipeline call), `store` and `stored`
around the encode and upload of its images. `DIFFQ_TEST_FINISH_FAULT` holds the upload:
- `wait_for_next`: a job's store waits (up to a minute) until a job after it has started denoising;
- `hang_first_attempt`: a first attempt's store never ends (the test kills the worker).
"""

import os
import threading
import time

from workers.job_run import JobRun

LOG = os.environ["DIFFQ_TEST_FINISH_LOG"]
FAULT = os.environ.get("DIFFQ_TEST_FINISH_FAULT", "")
lock = threading.Condition()
denoised: list[str] = []  # the job ids whose denoising started, in order


def note(what: str, run: JobRun) -> None:
    with lock, open(LOG, "a") as log:  # one line at a time, in the order they happen
        log.write(f"{what} {run.job_id} {run.attempt}\n")


original_start = JobRun.start_diffusers_progress
original_store = JobRun.store_pending


def start_diffusers_progress(self: JobRun, *args, **kwargs):
    note("denoise", self)
    with lock:
        denoised.append(str(self.job_id))
        lock.notify_all()
    return original_start(self, *args, **kwargs)


def next_started(job_id: str) -> bool:
    return job_id in denoised and denoised.index(job_id) < len(denoised) - 1


def store_pending(self: JobRun) -> None:
    note("store", self)
    if FAULT == "wait_for_next":
        with lock:
            lock.wait_for(lambda: next_started(str(self.job_id)), timeout=60)
    elif FAULT == "hang_first_attempt" and self.attempt == 1:
        while True:
            time.sleep(1)
    original_store(self)
    note("stored", self)


JobRun.start_diffusers_progress = start_diffusers_progress
JobRun.store_pending = store_pending
