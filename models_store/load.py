"""Load a resolved model folder into a ready-to-run diffusers pipeline on the worker's device.

torch and diffusers are imported inside the functions, so that importing `models_store` stays cheap for
processes that never load a model.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import BadModel

if TYPE_CHECKING:
    import torch

TASKS = ("text2img", "unconditional")

_DTYPES = ("auto", "float32", "float16", "bfloat16")


def pick_device(setting: str) -> "torch.device":
    """The device for a `DIFFQ_DEVICE` setting: "auto" is the first CUDA GPU if there is one, else the CPU.

    An explicit CUDA setting on a machine without CUDA is an error here rather than a silent fallback to
    the CPU, which would make every job quietly a hundred times slower.
    """
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as error:
        raise ValueError(f"unknown device {setting!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {setting!r} asks for CUDA, but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {setting!r} does not exist; torch sees {torch.cuda.device_count()} CUDA devices"
        )
    return device


def pick_dtype(setting: str, device: "torch.device") -> "torch.dtype":
    """The weights dtype for a `DIFFQ_DTYPE` setting: "auto" is float16 on CUDA and float32 elsewhere.

    float16 is not the CPU default because many CPU kernels lack it or run it slower than float32.
    """
    import torch

    if setting not in _DTYPES:
        raise ValueError(f"unknown dtype {setting!r}; expected one of {', '.join(_DTYPES)}")
    if setting == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, setting)


def load_pipeline(folder: Path, task: str, device: "torch.device", dtype: "torch.dtype") -> Any:
    """Load the pipeline in `folder` for `task`, move it to `device` and silence its progress bars.

    "text2img" goes through `AutoPipelineForText2Image`, which also maps an img2img or inpaint checkpoint to
    its text-to-image pipeline; "unconditional" loads whatever pipeline `model_index.json` names and checks
    that it has the `unet` and `scheduler` an unconditional run needs. Only safetensors weights are read.
    A folder that does not load raises `BadModel`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise BadModel(f"cannot load {folder} as a pipeline: it has no model_index.json")
    loader = AutoPipelineForText2Image if task == "text2img" else DiffusionPipeline
    try:
        # `dtype`, not `torch_dtype`: diffusers 0.42 deprecates the latter. What from_pretrained raises for
        # a bad folder: OSError (missing or corrupt files), ValueError (wrong class or shapes), TypeError
        # (config values of the wrong type), ImportError (a component needs a package that is not installed).
        pipe = loader.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, TypeError, ImportError) as error:
        raise BadModel(
            f"cannot load {folder} for {task}: {type(error).__name__}: {_first_line(error)}"
        ) from error
    if task == "unconditional" and (
        getattr(pipe, "unet", None) is None or getattr(pipe, "scheduler", None) is None
    ):
        raise BadModel(
            f"cannot load {folder} for unconditional: {type(pipe).__name__} lacks a unet or a scheduler"
        )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
