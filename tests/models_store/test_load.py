import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import BadModel
from models_store.load import load_pipeline, pick_device, pick_dtype

CPU = torch.device("cpu")
PROMPT = "a squirrel in Picasso style"


@pytest.fixture(scope="module")
def sd(tiny_models_dir: Path):
    return load_pipeline(tiny_models_dir / "tiny-sd", "text2img", CPU, torch.float32)


def _to_255(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255).astype(np.int16)


def test_text2img_generates_images_of_the_requested_size(sd) -> None:
    from diffusers import StableDiffusionPipeline

    assert isinstance(sd, StableDiffusionPipeline)
    assert sd.vae_scale_factor == 8
    assert sd.unet.dtype == torch.float32 and sd.device == CPU
    images = sd(PROMPT, num_inference_steps=20, generator=torch.Generator("cpu").manual_seed(0)).images
    assert [im.size for im in images] == [(64, 64)]
    wide = sd(PROMPT, height=48, width=80, num_inference_steps=2, output_type="np").images
    assert wide.shape == (1, 48, 80, 3)


def test_unconditional_generates_32px_images(tiny_models_dir: Path) -> None:
    pipe = load_pipeline(tiny_models_dir / "tiny-ddpm", "unconditional", CPU, torch.float32)
    assert type(pipe).__name__ == "DDPMPipeline"
    images = pipe(
        batch_size=2, num_inference_steps=20, generator=torch.Generator("cpu").manual_seed(0)
    ).images
    assert [im.size for im in images] == [(32, 32), (32, 32)]


def test_load_honours_dtype(tiny_models_dir: Path) -> None:
    pipe = load_pipeline(tiny_models_dir / "tiny-ddpm", "unconditional", CPU, torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16


def test_same_seed_gives_the_same_image(tiny_models_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models_dir / "tiny-sd")
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipe(PROMPT, num_inference_steps=20, generator=generator, output_type="np").images

    first, second, other = run(1234), run(1234), run(1235)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - other).max() > 0.05


def test_batch_with_a_generator_per_image_matches_single_images(sd) -> None:
    """Image i of a batch seeded `s + i` is image `s + i` run alone, to float32 rounding (1e-6 here)."""
    seed, kwargs = 1234, {"height": 64, "width": 64, "num_inference_steps": 20, "guidance_scale": 7.5}
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(2)]
    batch = sd([PROMPT] * 2, generator=generators, output_type="np", **kwargs).images
    singles = np.concatenate(
        [
            sd(
                PROMPT, generator=torch.Generator("cpu").manual_seed(seed + i), output_type="np", **kwargs
            ).images
            for i in range(2)
        ]
    )
    assert np.abs(batch - singles).max() < 1e-4
    assert np.abs(_to_255(batch) - _to_255(singles)).max() <= 1


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")


def test_pick_dtype() -> None:
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert pick_dtype("bfloat16", CPU) == torch.bfloat16
    assert pick_dtype("float16", CPU) == torch.float16
    with pytest.raises(ValueError, match="auto, float32, float16, bfloat16"):
        pick_dtype("fp16", CPU)


def test_unknown_task_is_a_value_error(tiny_models_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'img2vid'"):
        load_pipeline(tiny_models_dir / "tiny-sd", "img2vid", CPU, torch.float32)


def test_unconditional_model_refused_for_text2img(tiny_models_dir: Path) -> None:
    folder = tiny_models_dir / "tiny-ddpm"
    with pytest.raises(BadModel, match="cannot load .*tiny-ddpm for text2img: ValueError") as info:
        load_pipeline(folder, "text2img", CPU, torch.float32)
    assert info.value.code == "bad_model"


@pytest.mark.parametrize(
    ("breakage", "cause"),
    [
        ("no_weights", "OSError: Error no file named diffusion_pytorch_model.safetensors"),
        ("corrupt_weights", "OSError: Unable to load weights"),
        ("unknown_class", "ValueError: `diffusers` has no class `NoSuchModel`"),
        ("no_index", "it has no model_index.json"),
    ],
)
def test_broken_folder_is_bad_model(tiny_models_dir: Path, tmp_path: Path, breakage: str, cause: str) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_models_dir / "tiny-ddpm", folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if breakage == "no_weights":
        weights.unlink()
    elif breakage == "corrupt_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif breakage == "unknown_class":
        index = json.loads((folder / "model_index.json").read_text())
        index["unet"] = ["diffusers", "NoSuchModel"]
        (folder / "model_index.json").write_text(json.dumps(index))
    else:
        (folder / "model_index.json").unlink()
    with pytest.raises(BadModel) as info:
        load_pipeline(folder, "unconditional", CPU, torch.float32)
    assert str(folder) in info.value.message
    assert cause in info.value.message
    assert "\n" not in info.value.message


def test_unconditional_needs_a_unet(tiny_models_dir: Path, tmp_path: Path) -> None:
    """A DiT is a class-conditional transformer pipeline: it loads, but cannot run as "unconditional"."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    vae = AutoencoderKL.from_pretrained(tiny_models_dir / "tiny-sd" / "vae")
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dit")
    with pytest.raises(BadModel, match="for unconditional: DiTPipeline lacks a unet or a scheduler"):
        load_pipeline(tmp_path / "dit", "unconditional", CPU, torch.float32)


def test_pipeline_for_task_shares_modules_and_keeps_their_dtype(tiny_models_dir: Path) -> None:
    from core.schedulers import make_scheduler
    from models_store.load import pipeline_for_task

    base = load_pipeline(tiny_models_dir / "tiny-sd", "img2img", CPU, torch.bfloat16)
    for task, class_name in [
        ("text2img", "StableDiffusionPipeline"),
        ("img2img", "StableDiffusionImg2ImgPipeline"),
        ("inpaint", "StableDiffusionInpaintPipeline"),
    ]:
        pipe = pipeline_for_task(base, task, make_scheduler("unipc", base.scheduler))
        assert type(pipe).__name__ == class_name
        assert pipe.unet is base.unet and pipe.vae is base.vae
        assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
        assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert type(base.scheduler).__name__ == "PNDMScheduler"


def test_depth2img_shares_modules_and_needs_a_depth_model(tiny_models_dir: Path) -> None:
    from models_store.load import pipeline_for_task

    depth = load_pipeline(tiny_models_dir / "tiny-sd-depth", "depth2img", CPU, torch.bfloat16)
    pipe = pipeline_for_task(depth, "depth2img")
    assert pipe is not depth and pipe.unet is depth.unet and pipe.depth_estimator is depth.depth_estimator
    assert pipe.unet.dtype == torch.bfloat16
    with pytest.raises(BadModel, match="StableDiffusionDepth2ImgPipeline model cannot run text2img jobs"):
        pipeline_for_task(depth, "text2img")
    sd = load_pipeline(tiny_models_dir / "tiny-sd", "text2img", CPU, torch.float32)
    with pytest.raises(
        BadModel, match="StableDiffusionPipeline model cannot run depth2img jobs: it has no depth"
    ):
        pipeline_for_task(sd, "depth2img")
    with pytest.raises(BadModel, match="cannot load .*tiny-sd for depth2img"):
        load_pipeline(tiny_models_dir / "tiny-sd", "depth2img", CPU, torch.float32)


def test_text_conditioned_model_refused_for_unconditional(tiny_models_dir: Path) -> None:
    with pytest.raises(BadModel, match="UNet2DConditionModel is conditioned on text; run text2img jobs"):
        load_pipeline(tiny_models_dir / "tiny-sd", "unconditional", CPU, torch.float32)
