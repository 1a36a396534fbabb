"""Load a resolved model folder into a ready-to-run diffusers pipeline on the worker's device.

torch and diffusers are imported inside the functions, so that importing `models_store` stays cheap for
processes that never load a model.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import BadModel, first_line
from core.job_types import JOB_TYPES
from core.model_configs import PipelineKind, make_kind, task_problem

if TYPE_CHECKING:
    import torch

# The diffusers class that loads each generation job type's pipeline, from core/job_types.py.
_LOADERS: dict[str, str] = {name: entry.pipeline for name, entry in JOB_TYPES.items() if entry.pipeline}
TASKS = tuple(_LOADERS)

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

    "text2img", "img2img" and "inpaint" go through diffusers' `AutoPipelineFor*`, which map any Stable
    Diffusion family checkpoint (SD 1.x, 2.x, SDXL; a text-to-image, img2img or inpainting one) to the
    pipeline for the task; "depth2img" loads a `StableDiffusionDepth2ImgPipeline`; "unconditional" loads
    whatever pipeline `model_index.json` names and checks that it has the `unet` and `scheduler` an
    unconditional run needs. Only safetensors weights are read. A folder that does not load raises
    `BadModel`. The result may serve the other tasks too, through `pipeline_for_task`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    import diffusers

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise BadModel(f"cannot load {folder} as a pipeline: it has no model_index.json")
    loader = getattr(diffusers, _LOADERS[task])
    try:
        # `dtype`, not `torch_dtype`: diffusers 0.42 deprecates the latter. What from_pretrained raises for
        # a bad folder: OSError (missing or corrupt files), ValueError (wrong class or shapes), TypeError
        # (config values of the wrong type), ImportError (a component needs a package that is not installed).
        pipe = loader.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, TypeError, ImportError) as error:
        raise BadModel(
            f"cannot load {folder} for {task}: {type(error).__name__}: {first_line(error)}"
        ) from error
    _check_fits_task(pipe, task, str(folder))
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_for_task(base: Any, task: str, scheduler: Any = None) -> Any:
    """A pipeline for `task` around `base`'s modules, with `scheduler` if given: no weights are loaded.

    A job gets a pipeline object of its own (its own scheduler, its own call state) while the UNet, VAE
    and text encoder stay the cached ones, in the dtype they were loaded in: `AutoPipelineFor*.from_pipe`
    never casts. `DiffusionPipeline.from_pipe` would cast every shared module with `.to(dtype)` (to float32
    unless told otherwise), so a depth2img pipeline, whose class is the one that was loaded, is built from
    the same modules directly. An unconditional job drives `base.unet` with a scheduler of its own and
    gets `base` itself. Raises `BadModel` when `base` cannot serve `task`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    import diffusers

    name = type(base).__name__
    if task == "unconditional":
        _check_fits_task(base, task, name)
        return base
    modules = {"scheduler": scheduler} if scheduler is not None else {}
    if task == "depth2img":
        if not isinstance(base, diffusers.StableDiffusionDepth2ImgPipeline):
            raise BadModel(
                f"a {name} model cannot run depth2img jobs: it has no depth estimator; use a depth model "
                "(a StableDiffusionDepth2ImgPipeline such as stabilityai/stable-diffusion-2-depth)"
            )
        pipe = diffusers.StableDiffusionDepth2ImgPipeline(**(base.components | modules))
    else:
        try:
            pipe = getattr(diffusers, _LOADERS[task]).from_pipe(base, **modules)
        except ValueError as error:
            raise BadModel(f"a {name} model cannot run {task} jobs: {first_line(error)}") from error
    _check_fits_task(pipe, task, name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_fits_task(pipe: Any, task: str, name: str) -> None:
    """Raise `BadModel` unless `pipe` can run `task`: the rule the API applies to a local model's configs
    (core/model_configs.py `task_problem`), here on the loaded pipeline."""
    if problem := task_problem(pipeline_kind_of(pipe), task):
        raise BadModel(f"cannot run {name} for {task}: {problem}")


def pipeline_kind_of(pipe: Any) -> PipelineKind:
    """A loaded pipeline's `PipelineKind`, as `core.model_configs.pipeline_kind` reads it from a folder."""
    components = frozenset(key for key, module in pipe.components.items() if module is not None)
    unet, vae = getattr(pipe, "unet", None), getattr(pipe, "vae", None)
    unet_config = {**unet.config, "_class_name": type(unet).__name__} if unet is not None else None
    vae_config = getattr(vae, "config", None)
    return make_kind(type(pipe).__name__, components, unet_config, vae_config)
