"""`diffq submit` and `diffq watch` against the running API."""

import json
import subprocess
import sys

from core.images import read_png_parameters
from tests.utils.services import ROOT


def diffq(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--api-url", stack.api_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_submit_then_watch(stack, client, tmp_path) -> None:
    submitted = diffq(
        stack, "submit", "--model", "tiny-sd", "--prompt", "a red cube",
        "--param", "width=64", "--param", "height=64", "--param", "num_inference_steps=3",
        "--param", "seed=99",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert client.job(job_id)["params"]["seed"] == 99

    watched = diffq(stack, "watch", job_id)
    assert watched.returncode == 0, watched.stderr
    urls = [line for line in watched.stdout.splitlines() if line.startswith("http")]
    assert len(urls) == 1
    assert read_png_parameters(client.download(urls[0]))["params"]["prompt"] == "a red cube"


def test_submit_file_and_bad_spec(stack, tmp_path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps({"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x", "width": 12}})
    )
    result = diffq(stack, "submit", "--file", str(spec))
    assert result.returncode == 1
    assert "422" in result.stderr and "multiple of 8" in result.stderr
