"""`diffq worker --gpus`: which workers it plans, with which environment (CUDA is absent here, so the GPU
plans are checked as plans), and a real supervisor running a CPU worker."""

import contextlib
import os
import re
import signal
import subprocess
import sys

import pytest

from workers.supervisor import Gpu, detect_gpus, parse_gpus, plan_workers

H100 = "NVIDIA H100 80GB HBM3"
ARGS = ["--serve", "generation", "--loglevel", "INFO"]


def test_parse_gpus() -> None:
    assert parse_gpus("all") is None
    assert parse_gpus(" ALL ") is None
    assert parse_gpus("0,2") == ["0", "2"]
    assert parse_gpus("3") == ["3"]
    with pytest.raises(ValueError, match="'all' or comma-separated"):
        parse_gpus(",")
    with pytest.raises(ValueError, match="twice"):
        parse_gpus("1,1")


def test_one_child_per_gpu_sees_only_its_own_device() -> None:
    available = [Gpu("0", H100), Gpu("1", H100), Gpu("2", H100)]
    specs = plan_workers(["0", "2"], available, ARGS, {"DIFFQ_QUEUE": "q", "CUDA_VISIBLE_DEVICES": "0,1,2"})
    assert [spec.name for spec in specs] == ["gpu0@%h", "gpu2@%h"]
    for spec, index in zip(specs, ["0", "2"], strict=True):
        assert spec.env["CUDA_VISIBLE_DEVICES"] == index
        assert spec.env["DIFFQ_DEVICE"] == "cuda:0"  # the one device the child can see
        assert spec.env["DIFFQ_DEVICE_LABEL"] == f"cuda:{index} ({H100})"
        assert spec.env["DIFFQ_QUEUE"] == "q"  # the rest of the settings pass through
        assert spec.argv[:4] == [sys.executable, "-m", "cli", "worker"]
        assert spec.argv[4:] == [*ARGS, "--name", f"gpu{index}@%h"]


def test_all_gpus_and_uuid_ids() -> None:
    specs = plan_workers(None, [Gpu("GPU-aaaa", "L4"), Gpu("GPU-bbbb", None)], ARGS, {})
    assert [spec.name for spec in specs] == ["gpu0@%h", "gpu1@%h"]
    assert [spec.env["CUDA_VISIBLE_DEVICES"] for spec in specs] == ["GPU-aaaa", "GPU-bbbb"]
    assert [spec.env["DIFFQ_DEVICE_LABEL"] for spec in specs] == ["cuda:0 (L4)", "cuda:1"]


def test_no_gpu_means_one_cpu_worker() -> None:
    (spec,) = plan_workers(None, [], ARGS, {"CUDA_VISIBLE_DEVICES": "0"})
    assert spec.name == "cpu@%h"
    assert spec.env["DIFFQ_DEVICE"] == "cpu" and spec.env["DIFFQ_DEVICE_LABEL"] == "cpu"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == ""


def test_explicit_gpus_must_exist() -> None:
    with pytest.raises(ValueError, match="none is visible; use --gpus all"):
        plan_workers(["0"], [], ARGS, {})
    with pytest.raises(ValueError, match="no CUDA device 3; the visible ones are 0, 1"):
        plan_workers(["0", "3"], [Gpu("0"), Gpu("1")], ARGS, {})


def test_detect_gpus_honours_cuda_visible_devices() -> None:
    # No nvidia-smi here: the ids come from the variable as they are, up to the first invalid one.
    assert [gpu.id for gpu in detect_gpus({"CUDA_VISIBLE_DEVICES": "1,3"})] == ["1", "3"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert [gpu.id for gpu in detect_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"})] == ["2"]


def test_explicit_gpus_without_cuda_is_a_usage_error(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "worker", "--gpus", "0,2"],
        env=os.environ | {"CUDA_VISIBLE_DEVICES": "", "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "none is visible" in result.stdout + result.stderr


STARTED = re.compile(r"started worker cpu@%h \(pid (\d+)\)")
SUPERVISED_QUEUE = "diffq-test-supervised"


@pytest.fixture
def supervisor(stack):
    log_path = stack.tmp / "supervisor.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--gpus", "all", "--serve", "generation"],
        # A lease longer than the test: a job of a killed worker can come back only by its hand-back.
        env=os.environ
        | {"DIFFQ_QUEUE": SUPERVISED_QUEUE, "CUDA_VISIBLE_DEVICES": "", "DIFFQ_LEASE_S": "3600"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield process, log_path
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    for pid in STARTED.findall(log_path.read_text()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
    log.close()


def test_supervisor_runs_restarts_and_stops_a_cpu_worker(supervisor, client) -> None:
    import socket

    from tests.utils.jobs import submit_to_queue, text2img_spec, wait_finished
    from tests.utils.services import wait_for

    process, log_path = supervisor

    def ready_count(count: int):
        def check() -> bool:
            assert process.poll() is None, log_path.read_text()[-3000:]
            return log_path.read_text().count(" ready.") >= count

        return check

    node = f"cpu@{socket.gethostname()}"
    wait_for(ready_count(1), 120, "the supervised worker to be ready", interval=0.2)
    job_id = submit_to_queue(SUPERVISED_QUEUE, text2img_spec(num_inference_steps=2, num_images=1))
    done = wait_finished(client, str(job_id))
    assert done["status"] == "succeeded", done["error"]
    assert (done["worker"], done["device"]) == (node, "cpu")

    # A worker killed mid-job is restarted under the same name, and at start hands back the job it held
    # (its lease outlasts the test), which it then runs again.
    job_id = submit_to_queue(SUPERVISED_QUEUE, text2img_spec(num_inference_steps=400, num_images=1))
    wait_for(lambda: (client.job(job_id)["progress"] or {}).get("step", 0) >= 1, 120, "the long job to run")
    first_pid = int(STARTED.findall(log_path.read_text())[0])
    os.killpg(first_pid, signal.SIGKILL)
    wait_for(ready_count(2), 120, "the restarted worker to be ready", interval=0.2)
    pids = [int(pid) for pid in STARTED.findall(log_path.read_text())]
    assert len(pids) == 2 and pids[1] != first_pid
    assert "exited with status -9; restarting it" in log_path.read_text()
    done = wait_finished(client, job_id, timeout=300)
    assert (done["status"], done["attempts"], done["worker"]) == ("succeeded", 2, node)
    assert f"{node} starts again: job {job_id} that it held is queued" in log_path.read_text()

    # SIGTERM reaches the worker through the supervisor; both end cleanly.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)
