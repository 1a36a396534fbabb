"""Out of memory inside the pipeline call: a one-off OOM is retried with the cache emptied and succeeds;
a persistent one fails the job with `out_of_memory`; either way the worker takes the next job."""

import socket

import pytest

from core.db import db_session
from core.tables import WorkerNode
from tests.utils.jobs import submit_to_queue, text2img_spec, wait_finished
from tests.utils.services import WorkerProcess

OOM_QUEUE = "diffq-test-oom"
NODE = f"oom@{socket.gethostname()}"


@pytest.fixture(scope="module")
def oom_worker(stack):
    worker = WorkerProcess(
        stack.tmp / "oom-worker.log",
        # The 3rd UNet call of the process fails once; any batch over 4 always fails.
        env={"DIFFQ_TEST_FAULT": "oom_at:3,oom_over_batch:4"},
        name="oom@%h",
        queues=OOM_QUEUE,
        preload="tests.utils.faults",
    )
    worker.wait_ready()
    yield worker
    worker.stop()


def cache_counts() -> tuple[int, int, int]:
    with db_session() as session:
        row = session.get(WorkerNode, NODE)
        assert row is not None
        return row.cache_hits, row.cache_misses, row.cache_evictions


def test_one_off_oom_is_retried_and_a_persistent_one_fails_while_the_worker_goes_on(
    client, oom_worker
) -> None:
    # Four steps at batch 2 (guidance doubles the batch): call 3 runs out of memory, once.
    first = wait_finished(
        client, str(submit_to_queue(OOM_QUEUE, text2img_spec(num_inference_steps=4, num_images=1)))
    )
    assert first["status"] == "succeeded", first["error"]
    assert (first["attempts"], first["worker"]) == (1, NODE)
    assert first["progress"]["step"] == first["progress"]["total"]
    # The retry emptied the cache and loaded the model again.
    assert cache_counts() == (0, 2, 1)
    assert "ran out of memory" in oom_worker.log_path.read_text()

    # Three images are a batch of 6: out of memory on every try.
    second = wait_finished(
        client, str(submit_to_queue(OOM_QUEUE, text2img_spec(num_inference_steps=4, num_images=3)))
    )
    assert second["status"] == "failed"
    assert second["error"]["code"] == "out_of_memory"
    assert "CUDA out of memory" in second["error"]["message"]
    assert second["outputs"] == []

    third = wait_finished(
        client, str(submit_to_queue(OOM_QUEUE, text2img_spec(num_inference_steps=4, num_images=1)))
    )
    assert third["status"] == "succeeded", third["error"]
    assert third["worker"] == NODE
    assert oom_worker.process.poll() is None
