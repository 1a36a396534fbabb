"""What a cheap preview costs next to a denoising step.

    python bench/previews.py [--unet-steps 2] [--repeats 50]

Measures, on this machine's CPU (or the GPU with --device cuda):
1. the cheap preview (workers/previews.py: latents → RGB on the device, copy, upscale, JPEG) of an
   SD 1.5-sized latent (1×4×64×64, a 512 px image) and an SDXL-sized one (1×4×128×128), and its size;
2. one denoising step of a UNet with SD 1.5's architecture (random weights, no download) at 512 px
   with classifier-free guidance (batch 2), the step a preview is added to;
3. the worst case: tiny-sd (a UNet of a few thousand parameters) end to end with a preview every step
   and with previews off, where the fixed cost of a preview weighs most.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.previews import cheap_rgb, encode  # noqa: E402


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def preview_cost(device: str, repeats: int) -> dict[str, tuple[float, int]]:
    results = {}
    for name, fmt, shape in (
        ("SD 1.5 latents 1x4x64x64", "sd", (1, 4, 64, 64)),
        ("SDXL latents 1x4x128x128", "sdxl", (1, 4, 128, 128)),
    ):
        latents = torch.randn(shape, device=device)
        size = len(encode(cheap_rgb(latents, fmt), 128))
        times = timed(lambda latents=latents, fmt=fmt: encode(cheap_rgb(latents, fmt), 128), repeats)
        results[name] = (statistics.median(times), size)
    return results


def sd15_step(device: str, steps: int) -> float:
    from diffusers import UNet2DConditionModel

    unet = (
        UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        .to(device)
        .eval()
    )
    latents = torch.randn(2, 4, 64, 64, device=device)
    text = torch.randn(2, 77, 768, device=device)
    with torch.inference_mode():
        unet(latents, 999, encoder_hidden_states=text)  # warm up
        times = timed(lambda: unet(latents, 500, encoder_hidden_states=text), steps)
    return statistics.median(times)


def tiny_sd_runs(rounds: int) -> tuple[float, float]:
    """Seconds per step of tiny-sd's text2img pipeline (30 steps, 64 px) with previews off and with one
    every step, runs interleaved and the fastest of `rounds` kept (the least disturbed by other load)."""
    from core.config import get_settings
    from models_store.tiny import make_tiny_models
    from workers.job_run import JobRun
    from workers.pipelines import get_base_pipeline

    models = Path(tempfile.mkdtemp()) / "models"
    get_settings().models_dir = models
    make_tiny_models(models)
    pipe = get_base_pipeline("tiny-sd", "text2img")

    class Events:
        def preview(self, step: int, image: bytes, content_type: str) -> None:
            self.last = image

    def run_with(preview_every: int) -> float:
        params = {"prompt": "p", "preview_every": preview_every}
        run = JobRun(job_id=None, attempt=1, type="text2img", model="tiny-sd", stored_params=params)  # type: ignore[arg-type]
        run.events = Events()  # type: ignore[assignment]

        def callback(pipe, index, timestep, kwargs):
            run.maybe_preview(index + 1, kwargs["latents"], pipe)
            return kwargs

        started = time.perf_counter()
        pipe(
            prompt="p",
            num_inference_steps=30,
            width=64,
            height=64,
            callback_on_step_end=callback,
            output_type="latent",
        )
        return (time.perf_counter() - started) / 30

    run_with(1)
    off, on = [], []
    for _ in range(rounds):
        off.append(run_with(0))
        on.append(run_with(1))
    return min(off), min(on)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--unet-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")

    costs = preview_cost(args.device, args.repeats)
    for name, (seconds, size) in costs.items():
        print(f"cheap preview of {name}: {seconds * 1000:.2f} ms median, JPEG {size} bytes")

    step = sd15_step(args.device, args.unet_steps)
    sd15_preview = costs["SD 1.5 latents 1x4x64x64"][0]
    print(f"SD 1.5 UNet step at 512 px with guidance (batch 2): {step * 1000:.0f} ms median")
    print(f"=> a cheap preview at every step adds {sd15_preview / step * 100:.4f} % to an SD 1.5 step here")

    off, on = tiny_sd_runs(10)
    print(
        f"tiny-sd (worst case): {off * 1000:.2f} ms/step with previews off, {on * 1000:.2f} ms/step with one "
        f"every step (+{(on - off) / off * 100:.1f} %)"
    )


if __name__ == "__main__":
    main()
