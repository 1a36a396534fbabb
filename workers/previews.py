"""Previews while denoising: a small image of where a run stands, every `preview_every` steps.

The cheap one (`preview: "latent"`, the default) maps the latents to RGB with the latent format's
linear factors, one 4 × 3 matrix product per pixel (as ComfyUI's and A1111's "latent to RGB" previews
do), on the device, then copies a small uint8 image, upscales it to `DIFFQ_PREVIEW_SIZE` and encodes a
JPEG of a few KB. It shows the current latents, so early steps look like noise. A pixel-space model
(an unconditional UNet2DModel) needs no factors: its sample is the image. Known latent formats: SD 1.x
and 2.x, SDXL. Any other (SD3's and Flux's 16 channels, say) has no cheap preview: the job's stream
says so once and the run goes on without.

`preview: "vae"` decodes the first image's latents with the pipeline's VAE: a true picture of the
current latents, at the cost of a VAE decode per preview (on SD 1.5 at 512 px, about as long as
several denoising steps). Only the first image of a multi-image job is previewed.
"""

import io
import logging
from typing import Any

import torch
from PIL import Image

logger = logging.getLogger(__name__)

# Latent format -> (factors [latent channel][R, G, B], bias [R, G, B]), for the latents as diffusers
# pipelines hold them (already multiplied by the VAE's scaling factor). From ComfyUI's latent_formats.py.
LATENT_RGB = {
    "sd": (
        [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ],
        [0.0, 0.0, 0.0],
    ),
    "sdxl": (
        [
            [0.3651, 0.4232, 0.4341],
            [-0.2533, -0.0042, 0.1068],
            [0.1076, 0.1111, -0.0362],
            [-0.3165, -0.2492, -0.2188],
        ],
        [0.1084, -0.0175, -0.0011],
    ),
}
JPEG_QUALITY = 70


class NoCheapPreview(Exception):
    """This model's latent format has no known linear map to RGB."""


def latent_format(pipe: Any) -> str:
    """ "pixels" for a pixel-space model, "sd" or "sdxl" for their latents; NoCheapPreview otherwise."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return "pixels"
    channels = vae.config.get("latent_channels")
    name = type(pipe).__name__
    if channels == 4 and name.startswith("StableDiffusionXL"):
        return "sdxl"
    if channels == 4 and name.startswith("StableDiffusion") and "3" not in name:
        return "sd"
    raise NoCheapPreview(
        f"{name} with {channels}-channel latents has no cheap preview (known: SD 1.x/2.x, SDXL); "
        'ask for preview: "vae" to decode previews with its VAE'
    )


def cheap_rgb(latents: torch.Tensor, fmt: str) -> torch.Tensor:
    """The first image of `latents` (B, C, H, W) as uint8 RGB (H, W, 3), computed on their device."""
    first = latents[0].float()
    if fmt == "pixels":
        rgb = (first / 2 + 0.5).clamp(0, 1)
        if rgb.shape[0] == 1:
            rgb = rgb.expand(3, -1, -1)
        rgb = rgb[:3].permute(1, 2, 0)
    else:
        factors, bias = LATENT_RGB[fmt]
        matrix = torch.tensor(factors, device=first.device)
        rgb = torch.einsum("chw,cr->hwr", first, matrix) + torch.tensor(bias, device=first.device)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8)


def vae_rgb(latents: torch.Tensor, pipe: Any) -> torch.Tensor:
    """The first image of `latents` decoded with the pipeline's VAE, as uint8 RGB (H, W, 3)."""
    vae = pipe.vae
    with torch.inference_mode():
        decoded = vae.decode(latents[:1].to(vae.dtype) / vae.config.scaling_factor).sample[0]
    return ((decoded.float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8)


def encode(rgb: torch.Tensor, size: int) -> bytes:
    """A JPEG of `rgb` (H, W, 3 uint8) whose longest side is `size` px."""
    image = Image.fromarray(rgb.cpu().numpy())
    scale = size / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def preview_image(latents: torch.Tensor, pipe: Any, mode: str, size: int) -> bytes:
    """A JPEG preview of the first image of `latents`; NoCheapPreview for an unknown latent format."""
    rgb = vae_rgb(latents, pipe) if mode == "vae" else cheap_rgb(latents, latent_format(pipe))
    return encode(rgb, size)
