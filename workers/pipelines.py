"""The worker's pipeline cache: a job on a model that is already loaded does not reload it, and the
loaded pipelines fit the cache budget (`DIFFQ_CACHE_BUDGET_MB`, or a share of the device's memory)."""

from functools import lru_cache
from typing import Any

import torch

from core.config import get_settings
from models_store.cache import PipelineCache
from models_store.load import load_pipeline, pick_device, pick_dtype
from models_store.memory import cache_budget_bytes, estimate_folder_bytes
from models_store.resolve import resolve_model


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


def get_pipeline(model_ref: str, task: str) -> Any:
    settings = get_settings()
    folder = resolve_model(model_ref, settings.models_dir)
    device, dtype = device_and_dtype()
    key = (str(folder), task, str(device), str(dtype))
    return get_cache().get_or_load(
        key,
        lambda: load_pipeline(folder, task, device, dtype),
        estimate_bytes=estimate_folder_bytes(folder, dtype),
        # The model reference, as jobs name it: the fleet's affinity routing matches jobs on it.
        tag=model_ref,
    )
