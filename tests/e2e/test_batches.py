"""Batches end to end: many jobs in one request, run by the real worker, summed up in a manifest."""

import csv
import io
import json
import os
import subprocess
import sys

from core.images import read_png_parameters
from tests.utils.jobs import text2img_spec, wait_batch_done
from tests.utils.services import ROOT


def test_batch_of_50_jobs_finishes_with_a_correct_manifest(client) -> None:
    jobs = [
        text2img_spec(prompt=f"squirrel number {i}", num_inference_steps=2, seed=100 + i, num_images=1)
        for i in range(50)
    ]
    jobs[0]["params"]["num_images"] = 2
    created = client.submit_batch({"name": "fifty", "jobs": jobs})
    assert created["total"] == 50 and created["name"] == "fifty"
    assert created["counts"]["queued"] == 50 and created["manifest"] is None and not created["done"]

    batch = wait_batch_done(client, created["id"])
    assert batch["status"] == "succeeded"
    assert batch["counts"]["succeeded"] == 50
    assert batch["progress"] == {"finished": 50, "total": 50, "fraction": 1.0}
    assert batch["running"] == []

    manifest = client.manifest(created["id"])
    assert manifest["done"] and manifest["status"] == "succeeded"
    assert [entry["index"] for entry in manifest["jobs"]] == list(range(50))
    for i, entry in enumerate(manifest["jobs"]):
        assert entry["status"] == "succeeded"
        assert entry["params"]["prompt"] == f"squirrel number {i}" and entry["params"]["seed"] == 100 + i
        assert len(entry["outputs"]) == (2 if i == 0 else 1)
        assert entry["outputs"][0]["key"] == f"jobs/{entry['job_id']}/0.png"
    for entry in (manifest["jobs"][0], manifest["jobs"][49]):
        for output in entry["outputs"]:
            embedded = read_png_parameters(client.download(output["url"]))
            assert embedded["params"]["prompt"] == entry["params"]["prompt"]
            assert embedded["params"]["seed"] == output["seed"]

    rows = list(csv.DictReader(io.StringIO(client.manifest_csv(created["id"]))))
    assert len(rows) == 51  # one per output
    assert [(row["index"], row["output"], row["seed"]) for row in rows[:3]] == [
        ("0", "0", "100"),
        ("0", "1", "101"),
        ("1", "0", "101"),
    ]
    last = rows[-1]
    assert last["prompt"] == "squirrel number 49" and last["status"] == "succeeded"
    assert last["key"] == manifest["jobs"][49]["outputs"][0]["key"]
    assert read_png_parameters(client.download(last["url"]))["params"]["seed"] == 149
    assert json.loads(rows[1]["params"])["seed"] == 101

    listed = client.http.get("/v1/jobs", params={"batch_id": created["id"], "limit": 1000}).json()
    assert [job["batch_index"] for job in listed["data"]] == list(range(50))
    assert all(job["batch_id"] == created["id"] for job in listed["data"])


def test_sweep_expands_in_product_order_and_cancels_as_one(client) -> None:
    template = text2img_spec(num_inference_steps=50, num_images=1)
    for swept in ("prompt", "seed"):
        del template["params"][swept]
    sweep = {"prompt": ["a cat", "a dog"], "seed": [1, 2], "scheduler": ["euler_a", "ddim"]}
    created = client.submit_batch({"template": template, "sweep": sweep})
    assert created["total"] == 8

    canceled = client.cancel_batch(created["id"])
    assert canceled["canceled_at"] is not None
    jobs = client.http.get("/v1/jobs", params={"batch_id": created["id"]}).json()["data"]
    combos = [(job["params"]["prompt"], job["params"]["seed"], job["params"]["scheduler"]) for job in jobs]
    assert combos == [
        ("a cat", 1, "euler_a"),
        ("a cat", 1, "ddim"),
        ("a cat", 2, "euler_a"),
        ("a cat", 2, "ddim"),
        ("a dog", 1, "euler_a"),
        ("a dog", 1, "ddim"),
        ("a dog", 2, "euler_a"),
        ("a dog", 2, "ddim"),
    ]
    assert all(job["params"]["num_inference_steps"] == 50 for job in jobs)

    batch = wait_batch_done(client, created["id"])
    assert batch["status"] == "canceled"
    assert batch["counts"]["canceled"] >= 7  # the worker may have finished the first before the cancel
    assert batch["counts"]["canceled"] + batch["counts"]["succeeded"] == 8
    again = client.http.post(f"/v1/batches/{created['id']}/cancel")
    assert again.status_code == 409
    assert "nothing left to cancel" in again.json()["detail"]


def test_cli_batch_watches_and_downloads(client, stack, tmp_path) -> None:
    lines = [
        {"prompt": "a red squirrel", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 1},
        {"prompt": "a grey squirrel", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 2},
        # A whole spec: its own type, and the model from --model.
        {"type": "text2img", "params": {"prompt": "a black squirrel", "num_inference_steps": 2, "width": 64}},
    ]
    file = tmp_path / "prompts.jsonl"
    file.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "batch",
            str(file),
            "--model",
            "tiny-sd",
            "--watch",
            "--download",
            str(out),
            "--priority",
            "2",
        ],
        cwd=ROOT,
        env=os.environ | {"DIFFQ_PUBLIC_URL": stack.api_url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    batch_id = result.stdout.splitlines()[0].strip()
    assert f"batch {batch_id} succeeded: 3 succeeded" in result.stdout
    assert {
        job["priority"] for job in client.http.get("/v1/jobs", params={"batch_id": batch_id}).json()["data"]
    } == {2}
    assert sorted(p.name for p in out.iterdir()) == [
        "0_0.png",
        "1_0.png",
        "2_0.png",
        "manifest.csv",
        "manifest.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [job["params"]["prompt"] for job in manifest["jobs"]] == [
        "a red squirrel",
        "a grey squirrel",
        "a black squirrel",
    ]
    assert manifest["jobs"][2]["model"] == "tiny-sd"
    for job in manifest["jobs"]:
        [output] = job["outputs"]
        embedded = read_png_parameters((out / output["file"]).read_bytes())
        assert embedded["params"]["prompt"] == job["params"]["prompt"]
