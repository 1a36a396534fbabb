"""A job the API can't judge before it runs (an image mode, whose size comes from its input image) but its
model can't denoise fails with `bad_input` saying what to change, not `internal` from torch mid-call:
tiny-sd's UNet has one channel per norm group, so a 16×16 image without guidance leaves a group holding a
single value (core/model_configs.py `norm_problem`). Run through the worker's real task in this process."""

import io

import pytest
from PIL import Image

from core.db import db_session
from core.model_configs import norm_problem
from core.storage import get_storage
from core.tables import Job, JobStatus
from tests.workers.test_numerical import write_queued_job

TINY_SD_UNET = {"block_out_channels": [32, 64], "norm_num_groups": 32}
SD15_UNET = {"block_out_channels": [320, 640, 1280, 1280], "norm_num_groups": 32}


def test_norm_problem_only_for_a_group_of_one_value() -> None:
    assert norm_problem(TINY_SD_UNET, 8, 16, 16, 1) is not None
    assert norm_problem(TINY_SD_UNET, 8, 16, 16, 2) is None
    assert norm_problem(TINY_SD_UNET, 8, 24, 16, 1) is None
    assert norm_problem(TINY_SD_UNET, 8, 8, 8, 1) is not None  # latent 1×1 at every level
    assert norm_problem(SD15_UNET, 8, 8, 8, 1) is None  # ten channels per group
    assert norm_problem({}, 8, 16, 16, 1) is None  # a config that doesn't tell


@pytest.mark.parametrize(("guidance_scale", "code"), [(1.0, "bad_input"), (7.5, None)])
def test_img2img_too_small_for_the_model_fails_with_bad_input(
    database, s3, models_dir, guidance_scale: float, code: str | None
) -> None:
    from workers.tasks import JobFailed, run_job

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    get_storage().put("tests/model-fit/16.png", buffer.getvalue(), "image/png")
    params = {
        "prompt": "a cat",
        "image": {"key": "tests/model-fit/16.png"},
        "num_inference_steps": 2,
        "guidance_scale": guidance_scale,
        "seed": 0,
    }
    job_id = write_queued_job("img2img", "tiny-sd", params)
    if code is None:
        run_job(job_id)
    else:
        with pytest.raises(JobFailed, match=code):
            run_job(job_id)
    with db_session() as session:
        job = session.get_one(Job, job_id)
        if code is None:
            assert job.status == JobStatus.SUCCEEDED, job.error
        else:
            assert job.status == JobStatus.FAILED
            assert job.error["code"] == code, job.error
            assert "make the image larger" in job.error["message"]


def test_a_flat_depth_map_fails_with_bad_input_not_nan() -> None:
    from core.errors import BadInput
    from workers.runners.depth2img import depth_tensor

    with pytest.raises(BadInput, match="same value at every pixel"):
        depth_tensor(Image.new("I;16", (8, 8), 0))
    assert depth_tensor(Image.linear_gradient("L").resize((8, 8))).shape == (1, 8, 8)
