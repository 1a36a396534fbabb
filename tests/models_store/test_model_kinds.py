"""The rule that says which job types a model can run (core/model_configs.py `task_problem`) reads the
same kind from a folder's JSON configs (the API) as from the pipeline a worker loaded, and refuses what
diffusers really fails to run: checked by running the tiny pipelines, with UNets of 4, 5 and 9 input
channels."""

from pathlib import Path

import pytest
import torch

from core.errors import BadModel
from core.model_configs import kind_problem, pipeline_kind, task_problem
from models_store.load import load_pipeline, pipeline_for_task, pipeline_kind_of
from models_store.tiny import TINY_MODELS

CPU = torch.device("cpu")
TEXT_TASKS = {
    "text2img": ("StableDiffusionPipeline", ()),
    "img2img": ("StableDiffusionImg2ImgPipeline", ("image",)),
    "inpaint": ("StableDiffusionInpaintPipeline", ("image", "mask_image")),
}


@pytest.mark.parametrize("model", TINY_MODELS)
def test_configs_and_loaded_pipeline_have_the_same_kind(tiny_models_dir: Path, model: str) -> None:
    task = {"tiny-sd": "text2img", "tiny-sd-depth": "depth2img", "tiny-ddpm": "unconditional"}[model]
    pipe = load_pipeline(tiny_models_dir / model, task, CPU, torch.float32)
    kind = pipeline_kind(model, tiny_models_dir)
    assert kind is not None
    assert kind == pipeline_kind_of(pipe)
    assert task_problem(kind, task) is None


@pytest.fixture(scope="module")
def channel_models(tiny_models_dir: Path) -> Path:
    """tiny-sd as an inpainting checkpoint (a UNet of 9 input channels) and with a UNet of 5, saved as
    StableDiffusionInpaintPipeline folders next to the tiny models."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    sd = load_pipeline(tiny_models_dir / "tiny-sd", "inpaint", CPU, torch.float32)
    for channels in (5, 9):
        torch.manual_seed(channels)
        unet = UNet2DConditionModel.from_config({**sd.unet.config, "in_channels": channels})
        modules = {**sd.components, "unet": unet}
        StableDiffusionInpaintPipeline(**modules).save_pretrained(tiny_models_dir / f"tiny-sd-in{channels}")
    return tiny_models_dir


def _really_runs(pipe, task: str) -> bool:
    """Whether diffusers runs `task` on `pipe`'s modules, without diffq's checks."""
    import diffusers
    from PIL import Image

    class_name, image_fields = TEXT_TASKS[task]
    runner = getattr(diffusers, class_name)(**pipe.components)
    runner.set_progress_bar_config(disable=True)
    images = {field: Image.new("RGB", (64, 64), (200, 100, 0)) for field in image_fields}
    try:
        runner(prompt="a cat", num_inference_steps=2, output_type="np", **images)
    except (RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("channels", [4, 5, 9])
def test_unet_input_channels_decide_the_text_tasks(channel_models: Path, channels: int) -> None:
    model = "tiny-sd" if channels == 4 else f"tiny-sd-in{channels}"
    from diffusers import DiffusionPipeline

    # The class its model_index.json names, without diffq's checks.
    pipe = DiffusionPipeline.from_pretrained(channel_models / model, use_safetensors=True)
    assert pipeline_kind(model, channel_models) == pipeline_kind_of(pipe)
    verdicts = {}
    for task in TEXT_TASKS:
        runs = _really_runs(pipe, task)
        problem = kind_problem(model, task, channel_models)
        assert (problem is None) == runs, (model, task, problem)
        try:
            pipeline_for_task(load_pipeline(channel_models / model, task, CPU, torch.float32), task)
            worker_runs = True
        except BadModel as error:
            worker_runs = False
            assert problem is not None and problem.split(": ", 1)[1] in error.message
        assert worker_runs == runs, (model, task)
        verdicts[task] = runs
    expected = {
        4: {"text2img": True, "img2img": True, "inpaint": True},
        5: {"text2img": False, "img2img": False, "inpaint": False},
        9: {"text2img": False, "img2img": False, "inpaint": True},
    }
    assert verdicts == expected[channels]


def test_transformer_models_are_left_to_the_worker() -> None:
    """A pipeline without a UNet (a DiT, SD3, Flux) or without a VAE (DeepFloyd IF's pixel-space UNet) is
    judged only on what its configs tell."""
    from core.model_configs import PipelineKind, make_kind

    dit = PipelineKind("DiTPipeline", frozenset({"transformer", "vae", "scheduler"}), None, None, False, 4)
    assert task_problem(dit, "text2img") is None
    assert task_problem(dit, "unconditional") == "DiTPipeline lacks a unet or a scheduler"
    unet = {"_class_name": "UNet2DConditionModel", "in_channels": 3, "cross_attention_dim": 4096}
    deepfloyd = make_kind("IFPipeline", frozenset({"unet", "text_encoder", "scheduler"}), unet, None)
    assert task_problem(deepfloyd, "text2img") is None
    assert task_problem(deepfloyd, "img2img") is None
