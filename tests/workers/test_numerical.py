"""A run whose latents go NaN fails with `numerical_error` at the step it happened, and stores nothing.

The NaN comes from a model: a copy of a tiny model whose UNet has a NaN bias, saved and loaded through
the real `from_pretrained` path, as a broken checkpoint would be. (A scheduler that divides by zero,
once the cause of a job that "succeeded" with a black image, is refused before the first step now; see
tests/workers/test_scheduler_checks.py.) The job is written as a row and run through the worker's real
task in this process, as a worker would run it.
"""

import shutil
from pathlib import Path

import pytest

from core.db import db_session
from core.storage import get_storage
from core.tables import Job, JobStatus
from tests.utils.jobs import UNSERVED_QUEUE


def write_queued_job(type_: str, model: str, params: dict) -> str:
    with db_session() as session:
        job = Job(type=type_, model=model, params=params, queue=UNSERVED_QUEUE)
        session.add(job)
    return str(job.id)


def nan_copy(models_dir: Path, source: str) -> str:
    """A copy of model `source` whose UNet's output bias is NaN; returns its name."""
    from safetensors.torch import load_file, save_file

    name = f"nan-{source}"
    if not (models_dir / name).exists():
        shutil.copytree(models_dir / source, models_dir / name)
        [weights] = (models_dir / name / "unet").glob("*.safetensors")
        tensors = load_file(weights)
        tensors["conv_out.bias"][0] = float("nan")
        save_file(tensors, weights, metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("scheduler", [None, "dpmpp_2m", "unipc"])
def test_nan_latents_fail_the_job_with_numerical_error(database, s3, models_dir, scheduler: str) -> None:
    from workers.tasks import JobFailed, run_job

    params = {"num_inference_steps": 4, "seed": 0, "num_images": 2, "scheduler": scheduler}
    job_id = write_queued_job("unconditional", nan_copy(models_dir, "tiny-ddpm"), params)
    with pytest.raises(JobFailed, match="numerical_error"):
        run_job(job_id)
    with db_session() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.FAILED
        assert job.error["code"] == "numerical_error", job.error
        assert "at step 1" in job.error["message"]
        assert job.outputs == [] or job.outputs is None
        assert job.progress["step"] == 0  # the step that went NaN is not counted as done
    assert get_storage().list(f"jobs/{job_id}") == []


def test_nan_latents_in_a_diffusers_pipeline_fail_at_their_step(database, s3, models_dir) -> None:
    """The same check in the diffusers step callback: img2img on a tiny-sd whose UNet makes NaN."""
    from core.storage import get_storage
    from core.uploads import store_upload
    from tests.utils.images import noise_image, png_bytes
    from workers.tasks import JobFailed, run_job

    upload_id, _ = store_upload(png_bytes(noise_image(seed=1)), get_storage())
    params = {
        "prompt": "a squirrel",
        "image": {"upload": upload_id},
        "strength": 1.0,
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "seed": 0,
        "num_images": 1,
        "scheduler": "dpmpp_2m",
    }
    job_id = write_queued_job("img2img", nan_copy(models_dir, "tiny-sd"), params)
    with pytest.raises(JobFailed, match="numerical_error"):
        run_job(job_id)
    with db_session() as session:
        job = session.get_one(Job, job_id)
        assert job.error["code"] == "numerical_error", job.error
        assert "the latents at step 1" in job.error["message"]
    assert get_storage().list(f"jobs/{job_id}") == []


def test_a_non_finite_decoded_image_fails_and_a_finite_one_is_kept() -> None:
    import numpy as np

    from core.errors import NumericalError
    from workers.job_run import JobRun

    run = JobRun(job_id=None, attempt=1, type="img2img", model="tiny-sd", stored_params={}, storage=None)
    images = np.full((2, 8, 16, 3), 0.5, dtype=np.float32)
    decoded = run.decoded_images(images)
    assert [image.size for image in decoded] == [(16, 8), (16, 8)]
    assert np.asarray(decoded[1]).tolist() == np.full((8, 16, 3), 128).tolist()
    images[1, 3, 3, 0] = np.nan
    with pytest.raises(NumericalError, match="the decoded image"):
        run.decoded_images(images)
