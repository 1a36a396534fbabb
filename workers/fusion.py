"""Running the jobs of one claim: one job alone, or a fused group as one pipeline call.

A worker that claims a job with a fusion key (core/fusion.py) also claims queued jobs with the same key,
up to `DIFFQ_MAX_FUSED_IMAGES` images in all (core/jobs.py `claim_partners`), and runs them here, as one
call of their runner's `run_group`. A fused call that runs out of device memory is split in halves and
each half run again, down to single jobs, which get the single job's treatment (workers/oom.py: the cache
emptied, one more try) before a job fails with `out_of_memory`.
"""

import importlib
import logging

import torch
from sqlalchemy.orm import Session

from core.errors import JobError
from core.job_types import job_type
from core.jobs import claim_partners
from core.scheduling import Claimer
from core.tables import Job
from workers.job_run import JobRun
from workers.oom import run_with_oom_retry
from workers.runners import RUNNERS, Runner
from workers.runners.text2img import Outcome

logger = logging.getLogger(__name__)


def group_size(lead: Job, max_images: int) -> int:
    """How many jobs a fused call led by `lead` may hold: every job of a group makes as many images."""
    return max(1, max_images // max(1, int((lead.params or {}).get("num_images", 1))))


def claim_group(session: Session, lead: Job, claimer: Claimer, max_images: int) -> list[Job]:
    """`lead` and the partners it can be fused with. The caller commits."""
    return [lead, *claim_partners(session, lead, claimer, group_size(lead, max_images) - 1)]


def run_jobs(runs: list[JobRun]) -> list[Outcome]:
    """Run the claimed `runs`; each one's output records, or the exception that ended it."""
    if len(runs) == 1:
        [run] = runs
        runner: Runner | None = RUNNERS.get(run.type)
        try:
            if runner is None:
                raise JobError(f"this worker has no runner for job type '{run.type}'", code="bad_input")
            return [run_with_oom_retry(runner, run)]
        except Exception as error:
            return [error]
    run_group = importlib.import_module(job_type(runs[0].type).runner).run_group
    try:
        return run_group(runs)
    except torch.OutOfMemoryError as error:
        logger.warning(
            "a fused call of %d jobs ran out of memory (%s); running it again in halves", len(runs), error
        )
    except Exception as error:  # the call itself failed: every job of it did
        return [error] * len(runs)
    # Outside the except block, the failed call's frames (and the memory they held) are gone.
    half = len(runs) // 2
    return run_jobs(runs[:half]) + run_jobs(runs[half:])
