"""Tiny random-weight pipelines in diffusers format, for tests and for trying diffq offline.

They are built from the real diffusers and transformers classes and saved with `save_pretrained`, so they
exercise the same loading code as a real model, yet a generation takes a fraction of a second on a CPU.
Their images are noise: only shapes, timings and determinism mean anything.

The CLIP tokenizer is written from scratch (a byte-level vocabulary and a handful of merges) because the
Hub may be out of reach; it tokenizes any prompt, just into short pieces.
"""

import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DDPMPipeline, StableDiffusionDepth2ImgPipeline, StableDiffusionPipeline
    from transformers import CLIPTokenizer

TINY_SD = "tiny-sd"
TINY_DDPM = "tiny-ddpm"
TINY_SD_DEPTH = "tiny-sd-depth"
TINY_MODELS = (TINY_SD, TINY_DDPM, TINY_SD_DEPTH)

# Fixed seeds so that rebuilding a tiny model gives the same weights, hence the same images.
_SEEDS = {TINY_SD: 0, TINY_DDPM: 1, TINY_SD_DEPTH: 2}

# A few merges so that the tokenizer's BPE path is exercised; each result is added to the vocabulary.
_MERGES = (("t", "h"), ("i", "n</w>"), ("q", "u"), ("r", "e"), ("s", "t"), ("a", "n"), ("th", "e</w>"))

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MAX_TOKENS = 77


def make_tiny_models(models_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write every tiny model under `models_dir` and return their folders, in `TINY_MODELS` order.

    A model whose folder already exists is kept as it is unless `overwrite`, so that calling this at every
    start is cheap. Each model is written to a hidden folder first and then renamed, so an interrupted
    build never leaves a half-written model that a later call would take for a finished one.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    builders = {TINY_SD: _build_tiny_sd, TINY_DDPM: _build_tiny_ddpm, TINY_SD_DEPTH: _build_tiny_sd_depth}
    folders = []
    for name in TINY_MODELS:
        folder = models_dir / name
        if overwrite or not folder.exists():
            # Not `mkdtemp`: its 0700 mode would stay on the renamed folder.
            staging = models_dir / f".{name}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                builders[name](_SEEDS[name], staging).save_pretrained(staging, safe_serialization=True)
                if overwrite and folder.exists():
                    shutil.rmtree(folder)
                try:
                    staging.rename(folder)
                except OSError:
                    # Another process finished the same model first; the builds are identical, keep theirs.
                    if not (folder / "model_index.json").is_file():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        folders.append(folder)
    return folders


def _build_tiny_sd(seed: int, folder: Path) -> "StableDiffusionPipeline":
    """A Stable Diffusion 1.x layout: CLIP text encoder, cross-attention UNet, KL VAE with a factor of 8."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    # SD 1.x's own scheduler config.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        **_tiny_sd_modules(seed, folder, unet_in_channels=4),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tiny_sd_depth(seed: int, folder: Path) -> "StableDiffusionDepth2ImgPipeline":
    """The layout of `stabilityai/stable-diffusion-2-depth`: tiny-sd's modules, a UNet that takes the depth
    map as a fifth input channel, and a DPT depth estimator (a plain ViT DPT, not SD 2's DPT-Hybrid)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionDepth2ImgPipeline
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    modules = _tiny_sd_modules(seed, folder, unet_in_channels=5)
    torch.manual_seed(seed)
    depth_estimator = DPTForDepthEstimation(
        DPTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=4,
            backbone_out_indices=(0, 1, 2, 3),
            num_attention_heads=4,
            intermediate_size=37,
            neck_hidden_sizes=(16, 16, 32, 32),
            fusion_hidden_size=16,
            use_auxiliary_head=False,
        )
    ).eval()
    feature_extractor = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    # SD 2's scheduler config.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionDepth2ImgPipeline(
        **modules,
        scheduler=scheduler,
        depth_estimator=depth_estimator,
        feature_extractor=feature_extractor,
    )


def _tiny_sd_modules(seed: int, folder: Path, unet_in_channels: int) -> dict[str, Any]:
    """tiny-sd's VAE, text encoder, tokenizer and UNet; the UNet takes `unet_in_channels` latent channels."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _build_clip_tokenizer(folder / "tokenizer")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,  # 64 px images with the VAE's factor of 8
        in_channels=unet_in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),  # four blocks: 2**3 = 8, as in SD
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_MAX_TOKENS,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}


def _build_tiny_ddpm(seed: int, folder: Path) -> "DDPMPipeline":
    """An unconditional 32 px DDPM, the layout of `google/ddpm-cifar10-32` at a fraction of the width.

    `folder` is unused: nothing needs writing before `save_pretrained`, unlike the SD tokenizer's files.
    """
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


def _build_clip_tokenizer(folder: Path) -> "CLIPTokenizer":
    """A CLIP BPE tokenizer over the 256 byte-level symbols, padded with `<|endoftext|>` to 77 like CLIP's.

    `vocab.json` and `merges.txt` are written into `folder` and the tokenizer is built from them, as CLIP's
    own is. They stay there next to the `tokenizer.json` that `save_pretrained` adds, as in SD's repos,
    for tokenizer classes that read only the pair.
    """
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in _MERGES] + [_BOS, _EOS]
    vocab = {token: i for i, token in enumerate(tokens)}

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES), encoding="utf-8")
    return CLIPTokenizer(
        str(vocab_file),
        str(merges_file),
        bos_token=_BOS,
        eos_token=_EOS,
        unk_token=_EOS,
        pad_token=_EOS,
        model_max_length=_MAX_TOKENS,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) map from each byte to a printable unicode character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))
