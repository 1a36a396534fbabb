"""The fleet end to end: eviction under a one-model cache budget, the claim's order on a real worker,
device labels on jobs, and what `GET /metrics` reports about all of it."""

import shutil
import socket
import subprocess
import sys
import uuid

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from core.config import get_settings
from models_store.memory import estimate_folder_bytes
from tests.utils.jobs import submit_to_queue, text2img_spec, wait_finished
from tests.utils.services import WorkerProcess

EVICT_QUEUE = "diffq-test-evict"
HOST = socket.gethostname()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client) -> Samples:
    response = client.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{len(found)} samples of {name} with {labels}"
    return found[0]


@pytest.fixture(scope="module")
def second_model(models_dir):
    shutil.copytree(models_dir / "tiny-sd", models_dir / "tiny-sd-b", dirs_exist_ok=True)
    return "tiny-sd-b"


@pytest.fixture(scope="module")
def one_model_worker(stack, models_dir, second_model):
    """A worker whose cache budget fits one tiny-sd, on a queue of its own."""
    one_model = estimate_folder_bytes(models_dir / "tiny-sd", torch.float32)
    budget_mb = round(one_model * 1.5 / 2**20, 3)
    worker = WorkerProcess(
        stack.tmp / "one-model-worker.log",
        env={"DIFFQ_CACHE_BUDGET_MB": str(budget_mb)},
        name="onemodel@%h",
        queues=EVICT_QUEUE,
    )
    worker.wait_ready()
    yield worker, int(budget_mb * 2**20)
    worker.stop()


def test_alternating_models_on_a_one_model_budget_evicts_and_reloads(
    client, admin_client, one_model_worker, second_model
) -> None:
    _worker, budget = one_model_worker
    for model in ["tiny-sd", "tiny-sd", second_model, "tiny-sd", second_model]:
        job_id = submit_to_queue(EVICT_QUEUE, text2img_spec(model=model, num_inference_steps=2, num_images=1))
        done = wait_finished(client, str(job_id))
        assert done["status"] == "succeeded", done["error"]
        assert done["worker"] == f"onemodel@{HOST}"

    samples = scrape(admin_client)
    worker = {"worker": f"onemodel@{HOST}", "device": "cpu"}
    # Five jobs: one hit (the second tiny-sd), four loads, and every switch of model evicted the other.
    assert value(samples, "diffq_cache_hits_total", **worker) == 1
    assert value(samples, "diffq_cache_misses_total", **worker) == 4
    assert value(samples, "diffq_cache_evictions_total", **worker) == 3
    assert value(samples, "diffq_cache_load_seconds_total", **worker) > 0
    assert value(samples, "diffq_cache_resident_models", **worker) == 1
    assert value(samples, "diffq_cache_model_resident", model=second_model, **worker) == 1
    assert 0 < value(samples, "diffq_cache_resident_bytes", **worker) <= budget
    assert value(samples, "diffq_cache_budget_bytes", **worker) == budget


def test_metrics_count_jobs_histograms_queues_and_steps(client, admin_client) -> None:
    before = scrape(admin_client)
    # Guidance apart, so that they are two calls even if both wait (not fused: core/fusion.py).
    specs = [
        text2img_spec(num_inference_steps=3, num_images=1, seed=s, guidance_scale=g)
        for s, g in ((1, 7.5), (2, 7.0))
    ]
    jobs = [client.submit(spec) for spec in specs]
    for job in jobs:
        done = wait_finished(client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        assert done["device"] == "cpu"
        assert done["progress"]["steps_per_s"] > 0
    after = scrape(admin_client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - (
            value(before, name, **labels) if any(n == name for n, _ in before) else 0
        )

    assert grew("diffq_jobs", type="text2img", status="succeeded") == 2
    # A change, not a count: jobs that fast-tier tests claimed in this database stay running.
    assert grew("diffq_jobs", type="text2img", status="running") == 0
    for histogram in ("diffq_job_duration_seconds", "diffq_job_queue_seconds"):
        assert grew(f"{histogram}_count", type="text2img") == 2
        count = value(after, f"{histogram}_count", type="text2img")
        assert value(after, f"{histogram}_bucket", type="text2img", le="+Inf") == count
        assert value(after, f"{histogram}_sum", type="text2img") > 0
    assert value(after, "diffq_queue_depth", queue=get_settings().queue) >= 0
    assert value(after, "diffq_queue_depth", queue=get_settings().train_queue) >= 0

    main = {"worker": f"main@{HOST}"}
    assert grew("diffq_cache_hits_total", **main) + grew("diffq_cache_misses_total", **main) == 2
    assert grew("diffq_worker_jobs_total", **main) == 2
    assert grew("diffq_worker_busy_seconds_total", **main) > 0
    # PNDM runs one step more than asked for: 4 per job.
    assert grew("diffq_denoising_steps_total", **main) == 8
    assert value(after, "diffq_denoising_steps_per_second", **main) > 0
    assert value(after, "diffq_worker_busy", **main) == 0


def test_diffq_workers_lists_the_live_workers(one_model_worker) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "workers", *args], capture_output=True, text=True, timeout=120
        )

    listed = run("--require", f"onemodel@{HOST}", "--require", f"main@{HOST}")
    assert listed.returncode == 0, listed.stderr
    assert f"onemodel@{HOST}\tcpu\t" in listed.stdout
    missing = run("--require", "gpu7@nowhere")
    assert missing.returncode == 1 and "not live: gpu7@nowhere" in missing.stderr


def test_a_worker_claims_by_priority_then_fair_share_between_owners(admin_client, stack) -> None:
    """Jobs waiting before a worker starts run in the claim's order (core/scheduling.py), not the order
    their messages were sent in: the priority job first, then owner b's two interleaved with owner a's
    older backlog, then the rest of a's."""
    queue = f"diffq-test-order-{uuid.uuid4().hex[:6]}"
    spec = text2img_spec(num_inference_steps=1, num_images=1)
    sent = [("a", submit_to_queue(queue, spec, owner="a")) for _ in range(4)]
    sent += [("b", submit_to_queue(queue, spec, owner="b")) for _ in range(2)]
    sent += [("urgent", submit_to_queue(queue, spec | {"priority": 5}, owner="a"))]
    # Fusion off: these identical jobs would otherwise run as one call, and start together.
    env = {"DIFFQ_FUSION": "false"}
    worker = WorkerProcess(stack.tmp / "order-worker.log", env=env, name="order@%h", queues=queue)
    try:
        worker.wait_ready()
        done = [(label, wait_finished(admin_client, job_id)) for label, job_id in sent]
    finally:
        worker.stop()
    assert all(job["status"] == "succeeded" for _, job in done)
    order = [label for label, job in sorted(done, key=lambda pair: pair[1]["started_at"])]
    # "urgent" is a's too: a has run one, so b goes next, then they take turns.
    assert order == ["urgent", "b", "a", "b", "a", "a", "a"]
