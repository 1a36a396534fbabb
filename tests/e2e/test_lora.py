"""LoRA fine-tuning of tiny-sd, then generations with and without the LoRA on the same worker."""

import io
import uuid

import numpy as np
from PIL import Image
from safetensors.torch import load

from core.storage import get_storage
from tests.utils.jobs import text2img_spec, wait_finished


def pixels(client, job: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.download(job["outputs"][0]["url"]))), dtype=np.int16)


def test_lora_training_changes_the_images_and_leaves_the_base_clean(client) -> None:
    name = f"glyph-lora-{uuid.uuid4().hex[:8]}"
    training = client.submit(
        {
            "type": "train_lora",
            "model": "tiny-sd",
            "output_model": name,
            "params": {
                "dataset": "builtin:glyphs",
                "resolution": 64,
                "rank": 4,
                "train_batch_size": 4,
                "max_train_steps": 3,
                "learning_rate": 1e-2,
                "lr_warmup_steps": 0,
                "checkpointing_steps": 2,
                "seed": 0,
                "validation_prompt": "a red circle",
                "num_validation_images": 2,
                "validation_inference_steps": 4,
            },
        }
    )
    trained = wait_finished(client, training["id"], timeout=240)
    assert trained["status"] == "succeeded", trained["error"]
    assert trained["progress"]["step"] == trained["progress"]["total"] == 3
    kinds = [output["kind"] for output in trained["outputs"]]
    assert kinds == ["checkpoint", "sample_grid", "model"]
    grid = Image.open(io.BytesIO(client.download(trained["outputs"][1]["url"])))
    assert grid.size == (128, 64)  # the two validation images side by side

    model = client.http.get(f"/v1/models/{name}").json()
    assert model["kind"] == "lora" and model["base_model"] == "tiny-sd" and model["job_id"] == training["id"]
    weights = load(get_storage().get(f"{model['storage_prefix']}/pytorch_lora_weights.safetensors"))
    assert weights and all(key.startswith("unet.") and "lora" in key for key in weights)

    spec = text2img_spec(num_inference_steps=4, num_images=1, prompt="a red circle")
    without = wait_finished(client, client.submit(spec)["id"])
    with_lora = wait_finished(
        client, client.submit(spec | {"params": spec["params"] | {"lora": {"name": name}}})["id"]
    )
    without_again = wait_finished(client, client.submit(spec)["id"])
    for job in (without, with_lora, without_again):
        assert job["status"] == "succeeded", job["error"]
    assert with_lora["params"]["lora"] == {"name": name, "scale": 1.0}
    assert np.abs(pixels(client, with_lora) - pixels(client, without)).max() > 0, "the LoRA changed nothing"
    # The LoRA was unloaded: the cached pipeline makes the base model's image again.
    assert np.array_equal(pixels(client, without_again), pixels(client, without))


def test_lora_and_model_kinds_are_checked_at_submission(client) -> None:
    spec = text2img_spec(num_images=1)
    response = client.http.post(
        "/v1/jobs", json=spec | {"params": spec["params"] | {"lora": {"name": "nope"}}}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (
        error["loc"] == ["body", "params", "lora", "name"]
        and "no registered LoRA named 'nope'" in error["msg"]
    )

    response = client.http.post(
        "/v1/jobs",
        json={
            "type": "train_lora",
            "model": "tiny-sd",
            "output_model": "x",
            "params": {"dataset": "nope/none"},
        },
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    # A storage prefix outside the owner's own jobs is an admin's to name (core/ownership.py).
    assert error["loc"] == ["body", "params", "dataset"] and "is not yours to read" in error["msg"]
