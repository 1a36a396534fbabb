"""`diffq watch` and `diffq batch --watch` follow the event streams; the client falls back to polling
where the API serves none."""

import pytest

from cli.client import Client, NoStream
from cli.progress import stream_batch, stream_job
from tests.utils.jobs import text2img_spec


def test_a_job_is_followed_through_its_stream_to_its_end(client: Client) -> None:
    job = client.submit(text2img_spec(num_inference_steps=30, num_images=1))
    seen = list(client.events(f"/v1/jobs/{job['id']}/events"))
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "status" and seen[-1][1]["status"] == "succeeded"
    steps = [data["step"] for kind, data in seen if kind == "progress"]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] >= 30
    final = stream_job(client, job["id"])
    assert final["status"] == "succeeded" and final["outputs"][0]["url"]


def test_a_batch_is_followed_through_its_stream_to_its_end(client: Client) -> None:
    spec = text2img_spec(num_inference_steps=4, num_images=1)
    batch = client.submit_batch({"jobs": [spec, spec]})
    final = stream_batch(client, batch["id"])
    assert final["done"] and final["counts"]["succeeded"] == 2
    seen = list(client.events(f"/v1/batches/{batch['id']}/events"))  # replays, then ends
    statuses = sorted((data["batch_index"], data["status"]) for kind, data in seen if kind == "job")
    assert statuses == [(0, "running"), (0, "succeeded"), (1, "running"), (1, "succeeded")]
    assert seen[-1][0] == "counts" and seen[-1][1]["done"]


@pytest.mark.parametrize("path", ["/v1/no-such-stream", "/healthz"])
def test_no_stream_there_means_poll(client: Client, path: str) -> None:
    """An older API answers 404 for the stream, or something that is not one: the watchers poll."""
    with pytest.raises(NoStream):
        list(client.events(path))
