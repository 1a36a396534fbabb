"""Applying a registered LoRA to a generation, on the worker's cached pipeline, for one job only."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.config import get_settings
from core.errors import BadModel
from core.specs import LoraRef
from core.storage import get_storage
from models_store.registered import fetch_registered

ADAPTER = "diffq_job_lora"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@contextmanager
def lora_applied(pipe: Any, lora: LoraRef | None) -> Iterator[None]:
    """Within the block, `pipe` runs with the LoRA `lora` at its scale; afterwards it is unloaded, so
    that the cached pipeline is again the base model for the next job."""
    if lora is None:
        yield
        return
    settings = get_settings()
    folder = fetch_registered(lora.name, settings.models_dir, get_storage())
    if folder is None:
        raise BadModel(f"no registered LoRA named '{lora.name}'; GET /v1/models lists the registered models")
    try:
        pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS, adapter_name=ADAPTER)
        pipe.set_adapters([ADAPTER], adapter_weights=[lora.scale])
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        pipe.unload_lora_weights()
        raise BadModel(
            f"LoRA '{lora.name}' does not fit this job's model: {type(error).__name__}: {str(error)[:300]}"
        ) from error
    try:
        yield
    finally:
        pipe.unload_lora_weights()
