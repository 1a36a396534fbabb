"""Where diffq's models come from: resolving a reference to a local folder, loading it, caching pipelines.

Each submodule imports torch, diffusers and huggingface_hub inside the functions that need them, so
`import models_store` stays light.
"""

import logging

from models_store.cache import PipelineCache
from models_store.load import load_pipeline, pick_device, pick_dtype
from models_store.resolve import check_safetensors_only, model_exists, resolve_model
from models_store.tiny import TINY_MODELS, make_tiny_models


def _not_torchvision_fallback(record: logging.LogRecord) -> bool:
    # diffusers' pipelines import transformers' image processors (CLIP's, for the safety checker's
    # feature extractor), which warn that torchvision is missing and fall back to their PIL versions. diffq
    # needs no torchvision: the warning says nothing a user should act on, at every worker's start.
    return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_not_torchvision_fallback)

__all__ = [
    "TINY_MODELS",
    "PipelineCache",
    "check_safetensors_only",
    "load_pipeline",
    "make_tiny_models",
    "model_exists",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]
