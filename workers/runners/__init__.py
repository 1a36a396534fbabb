"""One runner per job type: each loads its pipeline (or trains a model), runs it with progress and
stores outputs. A job type names its runner's module in core/job_types.py; its `run` is looked up here."""

import importlib
from collections.abc import Callable
from typing import Any

from core.job_types import JOB_TYPES
from workers.job_run import JobRun

Runner = Callable[[JobRun], list[dict[str, Any]]]

RUNNERS: dict[str, Runner] = {
    name: importlib.import_module(entry.runner).run for name, entry in JOB_TYPES.items()
}
