"""Where diffq's models come from: resolving a reference to a local folder, loading it, caching pipelines.

Each submodule imports torch, diffusers and huggingface_hub inside the functions that need them, so
`import models_store` stays light.
"""

from models_store.cache import PipelineCache
from models_store.load import load_pipeline, pick_device, pick_dtype
from models_store.resolve import check_safetensors_only, model_exists, resolve_model
from models_store.tiny import TINY_MODELS, make_tiny_models

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
