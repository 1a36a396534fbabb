"""Training through the real worker: progress, loss history, sample grids, checkpoints, a registered
model that a generation job uses at once; and a worker killed mid-training, whose job resumes."""

import io
import json
import os
import signal
import time
import uuid

import pytest
import torch
from PIL import Image
from safetensors.torch import load
from sqlalchemy import update

from core.config import get_settings
from core.db import db_session
from core.reconcile import reconcile_once
from core.storage import get_storage
from core.tables import Job
from tests.utils.db import in_session
from tests.utils.jobs import submit_to_queue, train_spec, wait_finished
from tests.utils.services import WorkerProcess, wait_for

TRAIN_QUEUE = "diffq-test-train"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def unet_weights(client, model_name: str) -> dict[str, torch.Tensor]:
    model = client.http.get(f"/v1/models/{model_name}").json()
    data = get_storage().get(f"{model['storage_prefix']}/unet/diffusion_pytorch_model.safetensors")
    return load(data)


def test_train_then_generate(client) -> None:
    name = unique("glyphs")
    job = client.submit(train_spec(name, use_ema=True))
    assert job["output_model"] == name and job["model"] is None

    seen_steps: set[int] = set()
    deadline = time.monotonic() + 240
    while (current := client.job(job["id"]))["status"] not in ("succeeded", "failed", "canceled"):
        if current["progress"] and current["status"] == "running":
            seen_steps.add(current["progress"]["step"])
        assert time.monotonic() < deadline, current
        time.sleep(0.02)
    assert current["status"] == "succeeded", current["error"]
    assert len(seen_steps) >= 2, f"progress seen only at steps {sorted(seen_steps)}"

    progress = current["progress"]
    assert progress["step"] == progress["total"] == 8  # 2 epochs × 256 images / 64 per batch
    assert progress["epoch"] == 1 and progress["loss"] > 0 and progress["lr"] > 0
    assert progress["eta_s"] == 0

    metrics = client.http.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [m["step"] for m in metrics["data"]] == list(range(1, 9))
    assert [m["epoch"] for m in metrics["data"]] == [0] * 4 + [1] * 4
    assert all(m["loss"] > 0 for m in metrics["data"])
    # A warmup of 2 steps, then the full rate, then a cosine decay.
    assert [m["lr"] for m in metrics["data"][:3]] == pytest.approx([0, 5e-4, 1e-3])
    assert metrics["data"][-1]["lr"] < metrics["data"][3]["lr"]
    assert client.http.get(f"/v1/jobs/{job['id']}/metrics", params={"after_step": 6}).json()["count"] == 2

    by_kind: dict[str, list[dict]] = {}
    for output in current["outputs"]:
        by_kind.setdefault(output["kind"], []).append(output)
    assert [grid["epoch"] for grid in by_kind["sample_grid"]] == [0, 1]
    grid = Image.open(io.BytesIO(client.download(by_kind["sample_grid"][0]["url"])))
    assert grid.size == (32, 32)  # 4 samples of 16 px in a 2 × 2 grid
    [checkpoint] = by_kind["checkpoint"]
    assert checkpoint["step"] == 6
    pointer = json.loads(client.download(checkpoint["url"]))
    assert pointer["step"] == 6 and pointer["kept"] == [3, 6]
    assert any(key.endswith("model.safetensors") for key in pointer["keys"])
    assert all(get_storage().exists(key) for key in pointer["keys"])
    [model_output] = by_kind["model"]
    assert model_output["name"] == name

    models = client.http.get("/v1/models").json()["data"]
    [registered] = [m for m in models if m["name"] == name]
    assert registered["kind"] == "unconditional" and registered["job_id"] == job["id"]

    generation = client.submit(
        {
            "type": "unconditional",
            "model": name,
            "params": {"num_inference_steps": 5, "seed": 1, "num_images": 2},
        }
    )
    done = wait_finished(client, generation["id"])
    assert done["status"] == "succeeded", done["error"]
    images = [Image.open(io.BytesIO(client.download(o["url"]))) for o in done["outputs"]]
    assert [image.size for image in images] == [(16, 16), (16, 16)]


def test_name_of_a_registered_model_is_refused_unless_overwritten(client) -> None:
    name = unique("taken")
    first = wait_finished(client, client.submit(train_spec(name, num_epochs=1))["id"], timeout=240)
    assert first["status"] == "succeeded", first["error"]
    response = client.http.post("/v1/jobs", json=train_spec(name))
    assert response.status_code == 422
    assert "already registered" in response.text and first["id"] in response.text

    second = client.submit(train_spec(name, num_epochs=1, seed=7) | {"overwrite_output_model": True})
    assert wait_finished(client, second["id"], timeout=240)["status"] == "succeeded"
    model = client.http.get(f"/v1/models/{name}").json()
    assert model["job_id"] == second["id"] and second["id"] in model["storage_prefix"]


def test_fp16_on_a_cpu_worker_fails_with_bad_input(client) -> None:
    job = client.submit(train_spec(unique("half"), mixed_precision="fp16"))
    done = wait_finished(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "bad_input"
    assert "'fp16' needs a CUDA GPU" in done["error"]["message"] and "'bf16'" in done["error"]["message"]


class Trainer:
    """A worker of its own on its own queue, for tests that stall, cancel or kill training: its lease
    is 3 s and it reads a fault (see tests/utils/train_faults.py) from `fault_file` at every step."""

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.fault_file = tmp / "train-fault.json"
        self.fault_file.write_text("{}")
        self.worker: WorkerProcess | None = None
        self.name = ""

    def start(self, name: str) -> WorkerProcess:
        self.name = name
        self.worker = WorkerProcess(
            self.log_path,
            env={"DIFFQ_LEASE_S": "3", "DIFFQ_TEST_TRAIN_FAULT": str(self.fault_file)},
            name=f"{name}@%h",
            queues=TRAIN_QUEUE,
            preload="tests.utils.train_faults",
        )
        self.worker.wait_ready()
        return self.worker

    @property
    def log_path(self):
        return self.tmp / f"{self.name}.log"

    def fault(self, **fault: object) -> None:
        self.fault_file.write_text(json.dumps(fault))

    def kill(self) -> None:
        """SIGKILL the worker and its pool process at once, as an OOM killer or a lost node would."""
        assert self.worker is not None
        os.killpg(self.worker.process.pid, signal.SIGKILL)
        self.worker.stop()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


@pytest.fixture(scope="module")
def trainer(stack):
    trainer = Trainer(stack.tmp)
    trainer.start("trainer")
    yield trainer
    trainer.stop()


def test_canceled_training_stops_and_keeps_its_checkpoint(client, trainer) -> None:
    trainer.fault(sleep_s=0.3)
    name = unique("canceled")
    job_id = submit_to_queue(TRAIN_QUEUE, train_spec(name, num_epochs=50, checkpointing_steps=2))
    wait_for(
        lambda: any(o.get("kind") == "checkpoint" for o in client.job(job_id)["outputs"]),
        240,
        "a checkpoint",
    )
    # What a cancel does: the job is no longer running, so its next progress write fails.
    with db_session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="canceled"))
    # The task's result, logged after the stopped run recorded the step it reached (its "was canceled"
    # line comes before that write).
    wait_for(lambda: f"job {job_id}: canceled" in trainer.log_path.read_text(), 60, "the run to stop")
    assert "was canceled or taken over" in trainer.log_path.read_text()
    stopped_at = client.job(job_id)["progress"]["step"]
    time.sleep(1)  # several steps' time: nothing moves any more
    assert client.job(job_id)["progress"]["step"] == stopped_at < 200
    pointer = json.loads(get_storage().get(f"checkpoints/{job_id}/latest.json"))
    assert pointer["step"] % 2 == 0 and 2 <= pointer["step"] <= stopped_at
    assert all(get_storage().exists(key) for key in pointer["keys"])
    assert client.http.get(f"/v1/models/{name}").status_code == 404


def test_killed_worker_resumes_from_its_checkpoint(client, trainer, monkeypatch) -> None:
    spec = train_spec(unique("resumed"), num_epochs=3, checkpointing_steps=4, use_ema=True)
    marker = trainer.tmp / f"hung-{uuid.uuid4().hex[:8]}"
    # Hang as step 6 is logged: the checkpoint of step 4 is written, steps 5 and 6 are lost.
    trainer.fault(hang_at_step=6, marker=str(marker))
    job_id = submit_to_queue(TRAIN_QUEUE, spec)
    try:
        wait_for(marker.exists, 240, "the worker to reach step 6")
    finally:
        trainer.kill()
    assert client.job(job_id)["status"] == "running"

    trainer.fault()
    trainer.start("heir")
    # The killed worker's lease (3 s) runs out; the reconciler hands the job to the training queue.
    monkeypatch.setattr(get_settings(), "train_queue", TRAIN_QUEUE)
    wait_for(
        lambda: client.job(job_id)["status"] != "running" or in_session(reconcile_once)["requeued"],
        30,
        "requeue",
    )
    resumed = wait_finished(client, job_id, timeout=240)
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["attempts"] == 2 and resumed["worker"].startswith("heir@")
    assert resumed["progress"]["resumed_from"] == 4
    steps = [m["step"] for m in client.http.get(f"/v1/jobs/{job_id}/metrics").json()["data"]]
    assert steps == list(range(1, 13))  # each step once: the lost steps 5 and 6 were logged again

    reference_spec = spec | {"output_model": unique("uninterrupted")}
    reference = wait_finished(client, client.submit(reference_spec)["id"], timeout=240)
    assert reference["status"] == "succeeded", reference["error"]
    assert "resumed_from" not in reference["progress"]
    resumed_weights = unet_weights(client, spec["output_model"])
    reference_weights = unet_weights(client, reference_spec["output_model"])
    assert resumed_weights.keys() == reference_weights.keys()
    for key, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[key], tensor), key
