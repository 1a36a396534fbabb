"""A training job's sample grid and validation images stop at the next denoising step once the job is
canceled: they move no progress, so they check for a cancel at each step themselves."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DModel

from core.db import db_session
from core.jobs import cancel_job
from core.progress import JobCanceled
from core.specs import TrainLoraParams, TrainUnconditionalParams
from core.tables import Job, JobStatus
from workers.job_run import JobRun
from workers.runners.train_lora import validation_images
from workers.runners.train_unconditional import sample


@pytest.fixture
def canceled_run(database, s3) -> Iterator[JobRun]:
    """A running training job's run with its progress started; then the job is canceled."""
    with db_session() as session:
        job = Job(type="train_unconditional", model=None, params={}, status=JobStatus.RUNNING)
        session.add(job)
        session.commit()
        run = JobRun.from_job(job, session)
        run.start_training_progress(total=1, start_step=0)
        with db_session() as other:
            assert cancel_job(other, job.id)
            other.commit()
        yield run


def forward_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_canceled_sample_grid_stops_at_its_first_step(canceled_run: JobRun, models_dir: Path) -> None:
    unet = UNet2DModel.from_pretrained(models_dir / "tiny-ddpm" / "unet")
    params = TrainUnconditionalParams(
        dataset="builtin:glyphs", seed=1, eval_batch_size=16, sample_inference_steps=1000
    )
    calls = forward_calls(unet)
    with pytest.raises(JobCanceled, match=str(canceled_run.job_id)):
        sample(unet, DDPMScheduler(), params, canceled_run.reporter.poll_cancel)
    assert len(calls) == 1  # of 1000
    assert unet.training  # left in training mode for the steps to come


def test_canceled_validation_images_stop_at_their_first_step(canceled_run: JobRun, models_dir: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(
        models_dir / "tiny-sd", safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    params = TrainLoraParams(
        dataset="builtin:glyphs",
        seed=1,
        resolution=32,
        validation_prompt="a glyph",
        num_validation_images=2,
        validation_inference_steps=50,
    )
    calls = forward_calls(pipe.unet)
    with pytest.raises(JobCanceled):
        validation_images(pipe, params, canceled_run.reporter.poll_cancel)
    assert len(calls) == 1  # of 50


def test_poll_cancel_reads_the_status_at_most_every_interval() -> None:
    from core.progress import ProgressReporter

    now = [0.0]
    reads: list[uuid.UUID] = []
    reporter = ProgressReporter(
        uuid.uuid4(),
        1,
        10,
        min_interval_s=1.0,
        write=lambda *_: True,
        clock=lambda: now[0],
        check_interval_s=0.5,
        status=lambda job_id: reads.append(job_id) or JobStatus.RUNNING,
    )
    reporter.poll_cancel()
    reporter.poll_cancel()  # not due yet
    now[0] = 0.6
    reporter.poll_cancel()
    assert len(reads) == 2
