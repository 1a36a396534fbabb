"""One runner per job type: each loads its pipeline, runs it with progress and stores outputs."""

from collections.abc import Callable
from typing import Any

from workers.job_run import JobRun
from workers.runners import depth2img, img2img, inpaint, text2img, unconditional

Runner = Callable[[JobRun], list[dict[str, Any]]]

RUNNERS: dict[str, Runner] = {
    "text2img": text2img.run,
    "img2img": img2img.run,
    "inpaint": inpaint.run,
    "depth2img": depth2img.run,
    "unconditional": unconditional.run,
}
