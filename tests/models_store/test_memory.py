import gc
import weakref

import pytest
import torch

from models_store.cache import PipelineCache
from models_store.load import load_pipeline
from models_store.memory import cache_budget_bytes, estimate_folder_bytes, pipeline_bytes

CPU = torch.device("cpu")


@pytest.mark.parametrize(("model", "task"), [("tiny-sd", "text2img"), ("tiny-ddpm", "unconditional")])
def test_estimate_before_loading_matches_the_loaded_size(tiny_models_dir, model: str, task: str) -> None:
    pipe = load_pipeline(tiny_models_dir / model, task, CPU, torch.float32)
    loaded = pipeline_bytes(pipe)
    unet = pipe.unet
    assert loaded >= sum(p.numel() * 4 for p in unet.parameters())
    # The headers list every saved tensor; only buffers made at init (position ids) are not saved.
    assert estimate_folder_bytes(tiny_models_dir / model, torch.float32) == pytest.approx(loaded, rel=0.01)
    # Floating weights loaded in half precision take half the bytes.
    half = estimate_folder_bytes(tiny_models_dir / model, torch.float16)
    assert half == pytest.approx(loaded / 2, rel=0.01)


def test_variant_files_beside_plain_ones_are_not_counted(tiny_models_dir, tmp_path) -> None:
    import shutil

    folder = tmp_path / "with-variant"
    shutil.copytree(tiny_models_dir / "tiny-ddpm", folder)
    plain = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = estimate_folder_bytes(folder, torch.float32)
    shutil.copy(plain, folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert estimate_folder_bytes(folder, torch.float32) == before


def test_evicting_a_real_pipeline_frees_its_weights(tiny_models_dir) -> None:
    def load(model: str, task: str):
        return lambda: load_pipeline(tiny_models_dir / model, task, CPU, torch.float32)

    sd_bytes = estimate_folder_bytes(tiny_models_dir / "tiny-sd", torch.float32)
    cache = PipelineCache(budget_bytes=int(sd_bytes * 1.2))  # room for one pipeline
    unet = weakref.ref(cache.get_or_load("sd", load("tiny-sd", "text2img"), estimate_bytes=sd_bytes).unet)
    assert unet() is not None
    cache.get_or_load("ddpm", load("tiny-ddpm", "unconditional"), estimate_bytes=sd_bytes // 2)
    gc.collect()
    assert unet() is None, "something still holds the evicted pipeline's UNet"
    stats = cache.stats()
    assert [tag for tag, _ in stats.resident] == ["ddpm"] and stats.evictions == 1


def test_budget_setting_wins_over_the_fraction() -> None:
    assert cache_budget_bytes(CPU, budget_mb=64, fraction=0.5) == 64 * 2**20
    ram_share = cache_budget_bytes(CPU, budget_mb=0, fraction=0.5)
    assert 0 < ram_share < cache_budget_bytes(CPU, budget_mb=0, fraction=1.0)
