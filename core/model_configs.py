"""The JSON configs of a model folder, read without torch: what the API knows of a model before a job runs.

A diffusers pipeline folder has `model_index.json` (its class and components),
`scheduler/scheduler_config.json` and `unet/config.json`. Only folders under the
models dir are read; a Hub model not fetched yet, or a
registered model in storage, has no configs here and is checked by the worker instead.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.memo import Memo
from core.specs import Params, field_value


def read_config(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or not a readable JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def scheduler_config(ref: str, models_dir: Path) -> dict[str, Any] | None:
    """The scheduler config of the model folder `ref` under `models_dir` (with its `_class_name`), or None."""
    folder = model_folder(ref, models_dir)
    if folder is None:
        return None
    config = read_config(folder / "scheduler" / "scheduler_config.json")
    if config is None or not isinstance(config.get("_class_name"), str):
        return None
    return config


def steps_problem(model: str, params: Params, models_dir: Path, memo: Memo | None = None) -> str | None:
    """Why `params` (a job's params: `num_inference_steps`, `scheduler`, maybe `strength`) can't run on
    the local model `model`; None when they can, or when the model's scheduler config isn't here to read.
    `memo` (one per request) answers each (model, steps, scheduler, strength) once for a batch's jobs."""
    steps = field_value(params, "num_inference_steps")
    if steps is None:
        return None
    name = field_value(params, "scheduler")
    strength = field_value(params, "strength")
    if memo is None:
        return _steps_problem(model, steps, name, strength, models_dir)
    return memo.get(
        ("steps_problem", model, steps, name, strength),
        lambda: _steps_problem(model, steps, name, strength, models_dir),
    )


def _steps_problem(
    model: str, steps: int, name: str | None, strength: float | None, models_dir: Path
) -> str | None:
    from core.scheduler_limits import steps_problem as limits_problem
    from core.schedulers import SCHEDULERS

    config = scheduler_config(model, models_dir)
    if config is None:
        return None
    choice = SCHEDULERS.get(name) if name is not None else None
    class_name = choice.class_name if choice is not None else config["_class_name"]
    overrides = choice.overrides if choice is not None else {}
    return limits_problem(model, name, class_name, config, overrides, steps, strength)


def model_folder(ref: str, models_dir: Path) -> Path | None:
    """The folder `ref` names under `models_dir`, or None if it names none there."""
    try:
        folder = (Path(models_dir) / ref).resolve()
        if not folder.is_relative_to(Path(models_dir).resolve()) or not folder.is_dir():
            return None
    except (OSError, ValueError):
        return None
    return folder


@dataclass(frozen=True)
class PipelineKind:
    """What a model can run, from its configs: its pipeline class, the components it has (those not
    null in `model_index.json`), its UNet's class, input channels and whether it is conditioned on text
    (has a `cross_attention_dim`), and its VAE's latent channels."""

    pipeline: str
    components: frozenset[str]
    unet: str | None
    in_channels: int | None
    text_conditioned: bool
    latent_channels: int | None


def make_kind(
    pipeline: str, components: frozenset[str], unet: Mapping[str, Any] | None, vae: Mapping[str, Any] | None
) -> PipelineKind:
    """The kind of a pipeline of class `pipeline` with `components`, from its UNet's and VAE's configs."""
    in_channels = unet.get("in_channels") if unet is not None else None
    latent = vae.get("latent_channels") if vae is not None else None
    return PipelineKind(
        pipeline,
        components,
        str(unet.get("_class_name", "UNet")) if unet is not None else None,
        in_channels if isinstance(in_channels, int) else None,
        unet is not None and unet.get("cross_attention_dim") is not None,
        latent if isinstance(latent, int) else None,
    )


def pipeline_kind(ref: str, models_dir: Path) -> PipelineKind | None:
    """The kind of the local model folder `ref`, read from its JSON configs; None when it has no readable
    `model_index.json` (a Hub model not fetched, a registered model, a lone component)."""
    folder = model_folder(ref, models_dir)
    index = read_config(folder / "model_index.json") if folder is not None else None
    if folder is None or index is None or not isinstance(index.get("_class_name"), str):
        return None
    components = frozenset(
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and any(part is not None for part in value)
    )
    unet = read_config(folder / "unet" / "config.json") if "unet" in components else None
    vae = read_config(folder / "vae" / "config.json") if "vae" in components else None
    return make_kind(index["_class_name"], components, unet, vae)


DEPTH_PIPELINE = "StableDiffusionDepth2ImgPipeline"
# Job types whose pipeline is conditioned on a prompt (a LoRA trains on one too).
TEXT_TASKS = frozenset({"text2img", "img2img", "inpaint", "train_lora"})


def task_problem(kind: PipelineKind, task: str) -> str | None:
    """Why a model of `kind` can't run `task` jobs ("text2img", ..., "unconditional", "train_lora"), in
    words that follow "cannot run <model> for <task>: "; None when it can or when its configs don't tell.

    The API checks a local model's configs with this before it queues a job, and the worker the pipeline
    it loaded (models_store/load.py), so both refuse the same models with the same reason. Only what surely
    fails is refused: a pipeline without a UNet (a transformer model) or without a VAE (a pixel-space one)
    is judged on what it has.
    """
    unet_class, conditioned, in_channels = kind.unet, kind.text_conditioned, kind.in_channels
    latent = kind.latent_channels if in_channels is not None else None
    if task == "unconditional":
        if unet_class is None or "scheduler" not in kind.components:
            return f"{kind.pipeline} lacks a unet or a scheduler"
        if conditioned:
            return (
                f"its {unet_class} is conditioned on text; run text2img jobs on it, or use an unconditional "
                "model (a UNet2DModel) such as google/ddpm-cat-256"
            )
        return None
    if unet_class is not None and not conditioned:
        encoder = "" if "text_encoder" in kind.components else " with no text encoder"
        return (
            f"it is an unconditional model ({unet_class}{encoder}); use it in 'unconditional' jobs, or use a "
            "text-to-image model such as stable-diffusion-v1-5/stable-diffusion-v1-5"
        )
    if task == "depth2img":
        if kind.pipeline != DEPTH_PIPELINE:
            return (
                f"a {kind.pipeline} has no depth estimator; use a depth model (a {DEPTH_PIPELINE} such as "
                "stabilityai/stable-diffusion-2-depth)"
            )
        if latent is not None and in_channels != latent + 1:
            return (
                f"its UNet takes {in_channels} input channels, not the {latent + 1} (latents and depth) of a "
                "depth model such as stabilityai/stable-diffusion-2-depth"
            )
        return None
    if task in TEXT_TASKS and kind.pipeline == DEPTH_PIPELINE:
        return f"it is a depth model ({kind.pipeline}); use it in 'depth2img' jobs"
    if latent is None:
        return None
    if task == "inpaint" and in_channels not in (latent, 2 * latent + 1):
        return (
            f"its UNet takes {in_channels} input channels; inpainting needs {latent} (a text-to-image model) "
            f"or {2 * latent + 1} (an inpainting model: latents, mask and masked image)"
        )
    if task in TEXT_TASKS - {"inpaint"} and in_channels != latent:
        what = " (an inpainting model: run inpaint jobs on it)" if in_channels == 2 * latent + 1 else ""
        return f"its UNet takes {in_channels} input channels, not its VAE's {latent} latent channels{what}"
    return None


def kind_problem(ref: str, task: str, models_dir: Path) -> str | None:
    """Why the local model `ref` can't run `task` jobs, from its configs; None when it can or when they
    aren't here to read."""
    kind = pipeline_kind(ref, models_dir)
    problem = task_problem(kind, task) if kind is not None else None
    return f"model '{ref}' can't run {task} jobs: {problem}" if problem else None


def norm_problem(
    unet: Mapping[str, Any], vae_scale_factor: int, width: int, height: int, batch_size: int
) -> str | None:
    """Why a UNet with config `unet` can't denoise a `width`×`height` px image (latents `vae_scale_factor`
    times smaller) in a batch of `batch_size` latents; None when it can, or when its config doesn't tell.

    torch's `group_norm` refuses a group that holds a single value ("Expected more than 1 value per
    channel"). In a diffusers UNet, down block i works at the latent size halved i times (rounded up, as a
    stride-2 convolution pads) on `block_out_channels[i - 1]` channels, then `block_out_channels[i]`, in
    `norm_num_groups` groups, so a group holds `batch_size × channels / groups × h × w` values there.
    Real models have many channels per group; a small one (one channel per group) at a size whose deepest
    feature map is 1×1 fails with a batch of one: one image without classifier-free guidance (which
    doubles the batch when guidance_scale > 1).
    """
    channels, groups = unet.get("block_out_channels"), unet.get("norm_num_groups")
    if not isinstance(channels, list | tuple) or not isinstance(groups, int) or groups < 1 or not channels:
        return None
    if not all(isinstance(c, int) for c in channels):
        return None
    latent_w, latent_h = max(1, width // vae_scale_factor), max(1, height // vae_scale_factor)
    for level, count in enumerate(channels):
        scale = 2**level
        h, w = -(-latent_h // scale), -(-latent_w // scale)
        # A level's first ResNet normalizes what the level above handed down, before its own width.
        count = min(count, channels[level - 1]) if level else count
        if batch_size * (count // groups) * h * w <= 1:
            return (
                f"at {width}×{height} its UNet's level {level} is {w}×{h} with one channel per norm group, "
                f"which can't be normalized in a batch of {batch_size}; make the image larger (its "
                f"default size works), or make more than one image per call (num_images > 1 or "
                "guidance_scale > 1)"
            )
    return None


def vae_scale_factor(vae: Mapping[str, Any] | None) -> int:
    """How many times smaller than the image a VAE's latents are: 2 ** (its blocks - 1), as diffusers'
    pipelines compute it; 8 (Stable Diffusion's) when the config doesn't tell."""
    blocks = vae.get("block_out_channels") if vae is not None else None
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list | tuple) and blocks else 8


def size_problem(ref: str, params: Params, models_dir: Path, memo: Memo | None = None) -> str | None:
    """Why the local model `ref` can't make the images of a text-to-image job's `params` (`width`,
    `height`, `num_images`, `guidance_scale`) — see `norm_problem`; None when it can, or when its configs
    aren't here to read. `memo` (one per request) answers each distinct question once for a batch."""
    width, height = field_value(params, "width"), field_value(params, "height")
    guidance_scale = field_value(params, "guidance_scale")
    batch_size = (field_value(params, "num_images") or 1) * (2 if (guidance_scale or 0) > 1 else 1)
    if memo is None:
        return _size_problem(ref, width, height, batch_size, models_dir)
    return memo.get(
        ("size_problem", ref, width, height, batch_size),
        lambda: _size_problem(ref, width, height, batch_size, models_dir),
    )


def unet_and_scale(ref: str, models_dir: Path) -> tuple[dict[str, Any], int] | None:
    """The local model `ref`'s UNet config and its VAE's scale factor; None when its configs aren't here."""
    folder = model_folder(ref, models_dir)
    unet = read_config(folder / "unet" / "config.json") if folder is not None else None
    if folder is None or unet is None:
        return None
    return unet, vae_scale_factor(read_config(folder / "vae" / "config.json"))


def _native(unet: Mapping[str, Any], scale: int) -> int | None:
    sample_size = unet.get("sample_size")
    return sample_size * scale if isinstance(sample_size, int) else None


def native_size(ref: str, models_dir: Path) -> int | None:
    """The side in pixels of the square images the local model `ref` makes by default (its UNet's
    `sample_size` times its VAE's scale factor, as diffusers' pipelines work it out); None when its
    configs aren't here to read or don't tell."""
    found = unet_and_scale(ref, models_dir)
    return _native(*found) if found is not None else None


def _size_problem(
    ref: str, width: int | None, height: int | None, batch_size: int, models_dir: Path
) -> str | None:
    found = unet_and_scale(ref, models_dir)
    if found is None:
        return None
    unet, scale = found
    native = _native(unet, scale)
    width, height = width or native, height or native
    if width is None or height is None:
        return None
    problem = norm_problem(unet, scale, width, height, batch_size)
    return f"model '{ref}' can't make this image: {problem}" if problem else None
