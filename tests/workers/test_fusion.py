"""Job fusion in the worker's own code, in this process: a fused call makes each job's images as the job
alone would, a canceled member stores nothing while the others go on, and a call that runs out of memory
is split in halves down to single jobs before any job fails with `out_of_memory`."""

import io
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from core.db import db_session
from core.fusion import fuse_key
from core.jobs import cancel_job, claim
from core.progress import JobCanceled
from core.scheduling import Claimer
from core.storage import get_storage
from core.tables import Job, JobStatus
from tests.utils.db import in_session
from tests.utils.jobs import UNSERVED_QUEUE
from workers.fusion import group_size, run_jobs
from workers.job_run import JobRun

STEPS = 6


def params(prompt: str, seed: int, num_images: int = 1) -> dict:
    return {
        "prompt": prompt,
        "negative_prompt": "",
        "num_inference_steps": STEPS,
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
        "seed": seed,
        "num_images": num_images,
        "scheduler": "euler_a",  # draws noise at every step: each image needs its own generator throughout
    }


@pytest.fixture
def session(database, s3, models_dir) -> Iterator:
    with db_session() as session:
        yield session


def running_jobs(session, specs: list[dict]) -> list[JobRun]:
    """Jobs for `specs` (params each), claimed as a worker would, as JobRuns on `session`."""
    runs = []
    for spec in specs:
        with db_session() as own:
            job = Job(
                type="text2img",
                model="tiny-sd",
                params=spec,
                fuse_key=fuse_key("text2img", "tiny-sd", spec),
                queue=UNSERVED_QUEUE,  # not the shared test worker's: this test claims it
            )
            own.add(job)
        [claimed] = in_session(claim, Claimer(worker="fusion-test", queues=(), only=job.id))
        runs.append(JobRun.from_job(claimed, session))
    return runs


def images(outputs: list[dict]) -> list[np.ndarray]:
    storage = get_storage()
    return [np.asarray(Image.open(io.BytesIO(storage.get(o["key"])))).astype(int) for o in outputs]


SPECS = [params("a red square", 11), params("a blue disc", 22, num_images=2), params("a green cross", 33)]


def test_a_fused_call_makes_each_jobs_images_as_the_job_alone(session) -> None:
    fused = run_jobs(running_jobs(session, SPECS))
    alone = [run_jobs(running_jobs(session, [spec]))[0] for spec in SPECS]
    for together, single, spec in zip(fused, alone, SPECS, strict=True):
        assert not isinstance(together, BaseException), together
        assert not isinstance(single, BaseException), single
        assert len(together) == spec["num_images"]
        for got, expected in zip(images(together), images(single), strict=True):
            assert np.abs(got - expected).max() <= 1
        assert [o["seed"] for o in together] == [spec["seed"] + i for i in range(spec["num_images"])]


def test_a_canceled_member_stores_nothing_and_the_others_go_on(session) -> None:
    runs = running_jobs(session, [params("one", 1), params("two", 2), params("three", 3)])
    victim = runs[1].job_id
    calls = {"unet": 0}

    def cancel_at_third_step(module, args, kwargs):
        calls["unet"] += 1
        if calls["unet"] == 3:
            assert in_session(cancel_job, victim)

    from workers.pipelines import get_base_pipeline

    hook = get_base_pipeline("tiny-sd", "text2img").unet.register_forward_pre_hook(
        cancel_at_third_step, with_kwargs=True
    )
    try:
        outcomes = run_jobs(runs)
    finally:
        hook.remove()
    assert isinstance(outcomes[1], JobCanceled)
    assert get_storage().list(f"jobs/{victim}/") == []
    assert runs[1].reporter.current["step"] == 3  # it stopped being written at the step it was canceled
    for index in (0, 2):
        assert not isinstance(outcomes[index], BaseException), outcomes[index]
        assert len(outcomes[index]) == 1
        assert runs[index].reporter.current["step"] == STEPS
    with db_session() as own:
        assert own.get_one(Job, victim).status == JobStatus.CANCELED


@pytest.fixture
def oom_over_batch(monkeypatch) -> Iterator[dict]:
    """The UNet runs out of memory on a batch larger than `limit["batch"]`; counts its batches."""
    limit = {"batch": 0, "batches": []}
    original = UNet2DConditionModel.forward

    def forward(self, sample, *args, **kwargs):
        limit["batches"].append(sample.shape[0])
        if sample.shape[0] > limit["batch"]:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected, batch {sample.shape[0]})")
        return original(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    yield limit


def test_out_of_memory_splits_a_fused_call_down_to_single_jobs(session, oom_over_batch) -> None:
    # Four one-image jobs: a batch of 8 with guidance. Only 2 (one job) fits.
    oom_over_batch["batch"] = 2
    runs = running_jobs(session, [params(f"job {i}", 100 + i) for i in range(4)])
    outcomes = run_jobs(runs)
    assert all(not isinstance(outcome, BaseException) and len(outcome) == 1 for outcome in outcomes), outcomes
    # 8 (all four) failed, then 4 (each half) failed, then each job alone ran.
    assert oom_over_batch["batches"][:3] == [8, 4, 2]
    assert sorted(set(oom_over_batch["batches"])) == [2, 4, 8]


def test_a_job_that_does_not_fit_alone_fails_with_out_of_memory(session, oom_over_batch) -> None:
    from workers.tasks import error_for

    oom_over_batch["batch"] = 1
    outcomes = run_jobs(running_jobs(session, [params("a", 1), params("b", 2)]))
    assert all(isinstance(outcome, torch.OutOfMemoryError) for outcome in outcomes)
    assert {error_for(outcome)["code"] for outcome in outcomes} == {"out_of_memory"}
    # Both together, then each alone twice (the second time with the pipeline cache emptied).
    assert oom_over_batch["batches"] == [4, 2, 2, 2, 2]


def test_group_size_counts_images() -> None:
    def lead(num_images: int) -> Job:
        return Job(type="text2img", model="m", params={"num_images": num_images}, id=uuid.uuid4())

    assert group_size(lead(1), 8) == 8
    assert group_size(lead(3), 8) == 2
    assert group_size(lead(16), 8) == 1
    assert fuse_key("train_unconditional", None, {}) is None
    assert fuse_key("img2img", "tiny-sd", params("x", 1)) is None
    assert fuse_key("text2img", "tiny-sd", params("x", 1)) == fuse_key("text2img", "tiny-sd", params("y", 9))
    assert fuse_key("text2img", "tiny-sd", params("x", 1)) != fuse_key(
        "text2img", "tiny-sd", params("x", 1) | {"guidance_scale": 5.0}
    )
