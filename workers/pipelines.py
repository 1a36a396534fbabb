"""The worker's pipeline cache: a job on a model that is already loaded does not reload it."""

from functools import lru_cache
from typing import Any

import torch

from core.config import get_settings
from models_store.cache import PipelineCache
from models_store.load import load_pipeline, pick_device, pick_dtype
from models_store.registry import resolve_job_model


@lru_cache
def get_cache() -> PipelineCache:
    return PipelineCache(max_items=get_settings().pipeline_cache_size)


@lru_cache
def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    settings = get_settings()
    device = pick_device(settings.device)
    return device, pick_dtype(settings.dtype, device)


def get_pipeline(model_ref: str, task: str) -> Any:
    settings = get_settings()
    folder = resolve_job_model(model_ref, settings.models_dir)
    device, dtype = device_and_dtype()
    key = (str(folder), task, str(device), str(dtype))
    return get_cache().get_or_load(key, lambda: load_pipeline(folder, task, device, dtype))
