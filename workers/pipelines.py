"""The worker's pipeline cache: a job on a model that is already loaded does not reload it, and the
loaded pipelines fit the cache budget (`DIFFQ_CACHE_BUDGET_MB`, or a share of the device's memory).

A model is cached once, whichever task loaded it; each job then gets a pipeline of its own for its
task (`pipeline_for_task`) around the cached modules, with a scheduler of its own, so that one job's
scheduler choice or state never leaks into the next.
"""

import copy
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from core.config import get_settings
from core.errors import BadInput
from core.scheduler_limits import scheduler_problem
from core.schedulers import make_scheduler
from models_store.cache import PipelineCache
from models_store.load import load_pipeline, pick_device, pick_dtype, pipeline_for_task
from models_store.memory import cache_budget_bytes, estimate_folder_bytes
from models_store.registered import REGISTRY_DIR, resolve_job_model


@lru_cache
def get_cache() -> PipelineCache:
    settings = get_settings()
    device, _dtype = device_and_dtype()
    return PipelineCache(
        max_items=settings.pipeline_cache_size or None,
        budget_bytes=cache_budget_bytes(device, settings.cache_budget_mb, settings.cache_memory_fraction),
    )


@lru_cache
def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    settings = get_settings()
    device = pick_device(settings.device)
    return device, pick_dtype(settings.dtype, device)


def get_base_pipeline(model_ref: str, task: str) -> Any:
    """The cached pipeline of `model_ref`, loaded for `task` if no task loaded it before."""
    settings = get_settings()
    folder = job_model_folder(model_ref, settings.models_dir)
    device, dtype = device_and_dtype()
    key = (str(folder), str(device), str(dtype))
    return get_cache().get_or_load(
        key,
        lambda: load_pipeline(folder, task, device, dtype),
        estimate_bytes=lambda: estimate_folder_bytes(folder, dtype),
        # The model reference, as jobs name it: the fleet's affinity routing matches jobs on it.
        tag=model_ref,
    )


# Per (model reference, models dir) that named a folder of the models dir or a Hub download: the folder,
# and what `_stamp` said of it when `resolve_job_model` checked it.
_FOLDERS: dict[tuple[str, Path], tuple[Path, tuple[int, int, int]]] = {}


def job_model_folder(model_ref: str, models_dir: Path) -> Path:
    """`resolve_job_model`, checked once per folder rather than once per job (its checks read the folder's
    layout and files: about a millisecond a job): while the folder's `model_index.json` is the file that
    was checked, the reference names the same folder. A registered model is resolved every time, since its
    name may have been registered again, as a new version, since the last job; so is a folder without a
    `model_index.json`."""
    key = (model_ref, Path(models_dir))
    known = _FOLDERS.get(key)
    if known is not None and _stamp(known[0]) == known[1]:
        return known[0]
    folder = resolve_job_model(model_ref, models_dir)
    if REGISTRY_DIR not in folder.parts and (stamp := _stamp(folder)) is not None:
        _FOLDERS[key] = (folder, stamp)
    return folder


def _stamp(folder: Path) -> tuple[int, int, int] | None:
    """The inode, modification time and size of `folder`'s `model_index.json`; None if it has none."""
    try:
        stat = (folder / "model_index.json").stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def get_pipeline(
    model_ref: str,
    task: str,
    scheduler: str | None = None,
    steps: int | None = None,
    strength: float | None = None,
) -> Any:
    """A pipeline of the job's own for `task` on `model_ref`, with the named scheduler (None: the
    model's own, copied). For "unconditional", the cached pipeline itself: that runner drives the UNet
    with a scheduler it makes.

    With `steps`, the scheduler is first checked to run that many steps (at `strength`) on this model,
    as the API checks the models it can read the configs of; raises `BadInput` with the same message.
    """
    base = get_base_pipeline(model_ref, task)
    job_scheduler = new_scheduler(base, scheduler)
    if steps is not None:
        checked = _CHECKED.setdefault(base, {})
        key = (scheduler, steps, strength)
        if key not in checked:  # the same answer for every job of a model, scheduler and step count
            try:
                check_steps(model_ref, scheduler, new_scheduler(base, scheduler), steps, strength)
                checked[key] = None
            except BadInput as error:
                checked[key] = error
        if (problem := checked[key]) is not None:
            raise BadInput(str(problem))
    if task == "unconditional":
        return pipeline_for_task(base, task)
    return _own_pipeline(base, task, job_scheduler)


def _own_pipeline(base: Any, task: str, scheduler: Any) -> Any:
    """A pipeline of the job's own for `task` around `base`'s modules, with `scheduler`: a shallow copy of
    the one `pipeline_for_task` made for the first such job, so that its call state (`_guidance_scale`,
    `_num_timesteps`, ...) and scheduler are its own while the modules are shared. Making a pipeline with
    `from_pipe` for every job cost a worker about a millisecond a job."""
    made = _TASK_PIPELINES.setdefault(base, {})
    if task not in made:
        made[task] = pipeline_for_task(base, task)
    pipe = copy.copy(made[task])
    pipe.scheduler = scheduler  # DiffusionPipeline.__setattr__ gives the copy a config of its own
    return pipe


# Per cached pipeline, a scheduler of each name made once from its config; jobs get deep copies, which
# are their own (schedulers keep state between steps) and take a fraction of `from_config`'s time (it
# inspects every class's signature). Weak keys: an evicted pipeline takes its schedulers with it.
_SCHEDULERS: "weakref.WeakKeyDictionary[Any, dict[str | None, Any]]" = weakref.WeakKeyDictionary()
# Per cached pipeline, the pipeline made for each task, which jobs get copies of (`_own_pipeline`).
_TASK_PIPELINES: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
# Per cached pipeline, what `check_steps` said of each (scheduler, steps, strength) it checked.
_CHECKED: "weakref.WeakKeyDictionary[Any, dict[tuple[str | None, int, float | None], BadInput | None]]" = (
    weakref.WeakKeyDictionary()
)


def new_scheduler(base: Any, name: str | None) -> Any:
    """A scheduler of the job's own, named `name` (None: the model's), for the cached pipeline `base`."""
    made = _SCHEDULERS.setdefault(base, {})
    if name not in made:
        made[name] = make_scheduler(name, base.scheduler)
    return copy.deepcopy(made[name])


def check_steps(
    model_ref: str, name: str | None, scheduler: Any, steps: int, strength: float | None = None
) -> None:
    """Raise `BadInput` unless `scheduler` (a throwaway: this sets its timesteps) can run `steps` steps."""
    if problem := scheduler_problem(model_ref, name, scheduler, steps, strength):
        raise BadInput(problem)
