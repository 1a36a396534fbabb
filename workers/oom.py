"""Out of device memory: a job that hits a CUDA OOM gets one more try with the pipeline cache emptied,
then fails with `out_of_memory`. Either way the worker process stays up and takes the next job.

Only `torch.OutOfMemoryError` (torch.cuda.OutOfMemoryError) counts: it is what the CUDA caching
allocator raises when an allocation fails, and it leaves the process in a usable state.
"""

import logging
from typing import Any

import torch

from workers.job_run import JobRun
from workers.pipelines import get_cache

logger = logging.getLogger(__name__)


def run_with_oom_retry(runner: Any, run: JobRun) -> list[dict[str, Any]]:
    """Run `runner` on `run`; after an OOM, empty the pipeline cache and run it once more."""
    try:
        return runner(run)
    except torch.OutOfMemoryError as error:
        logger.warning(
            "job %s ran out of memory (%s); emptying the pipeline cache and retrying once", run.job_id, error
        )
    # Outside the except block the traceback is gone, and with it the runner's frames that still held the
    # pipeline, so emptying the cache really frees its memory before the second try.
    get_cache().clear()
    return runner(run)
