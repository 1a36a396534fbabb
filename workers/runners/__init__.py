"""One runner per job type: each loads its pipeline (or trains a model), runs it with progress and
stores outputs."""

from collections.abc import Callable
from typing import Any

from workers.job_run import JobRun
from workers.runners import (
    depth2img,
    img2img,
    inpaint,
    text2img,
    train_lora,
    train_unconditional,
    unconditional,
)

Runner = Callable[[JobRun], list[dict[str, Any]]]

RUNNERS: dict[str, Runner] = {
    "text2img": text2img.run,
    "img2img": img2img.run,
    "inpaint": inpaint.run,
    "depth2img": depth2img.run,
    "unconditional": unconditional.run,
    "train_unconditional": train_unconditional.run,
    "train_lora": train_lora.run,
}
