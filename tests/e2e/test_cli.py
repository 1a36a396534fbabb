"""The `diffq` command against the running API: each test runs the real command in a subprocess.

Expected errors (no API, a bad id, a missing file, a refused spec) are one or two lines that say
what to do, with exit code 1 and no traceback.
"""

import json
import os
import re
import subprocess
import sys
import time
import uuid

import psycopg
from PIL import Image

from cli.quickstart import free_port
from core.images import read_png_parameters
from tests.conftest import PG_SERVER, TEST_DB
from tests.utils.jobs import submit_to_queue, text2img_spec, wait_batch_done, wait_finished
from tests.utils.services import ROOT

NOBODY_QUEUE = "diffq-test-cli-nobody"  # a queue no worker reads: its jobs stay queued


def run_diffq(*args: str, env: dict[str, str] | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}),
        capture_output=True,
        text=True,
        timeout=180,
    )


def diffq(stack, *args: str) -> subprocess.CompletedProcess:
    return run_diffq(*args, "--api-url", stack.api_url)


def assert_short_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit code 1, one or two lines on stderr that contain `expected`, and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr


def test_submit_then_watch(stack, client, tmp_path) -> None:
    submitted = diffq(
        stack, "submit", "--model", "tiny-sd", "--prompt", "a red cube",
        "--param", "width=64", "--param", "height=64", "--param", "num_inference_steps=3",
        "--param", "seed=99", "--priority", "3",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert client.job(job_id)["params"]["seed"] == 99
    assert client.job(job_id)["priority"] == 3

    watched = diffq(stack, "watch", job_id)
    assert watched.returncode == 0, watched.stderr
    urls = [line for line in watched.stdout.splitlines() if line.startswith("http")]
    assert len(urls) == 1
    assert read_png_parameters(client.download(urls[0]))["params"]["prompt"] == "a red cube"
    # stdout is a pipe: whole lines, the last with the final status, not a frame cut to 80 columns
    [last] = [line for line in watched.stdout.splitlines() if line.startswith(f"{job_id[:8]} text2img ")][-1:]
    assert " succeeded elapsed " in last and "…" not in watched.stdout, watched.stdout


def test_submit_file_and_bad_spec(stack, tmp_path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps({"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x", "width": 20}})
    )
    result = diffq(stack, "submit", "--file", str(spec))
    assert result.returncode == 1
    assert "422" in result.stderr and "multiple of 8" in result.stderr
    assert "Traceback" not in result.stderr
    # Per field, not the raw JSON body.
    assert '"detail"' not in result.stderr and "params.width" in result.stderr, result.stderr
    # --webhook reaches the API, which checks the URL (a loopback address is refused by default).
    spec.write_text(json.dumps({"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x"}}))
    result = diffq(stack, "submit", "--file", str(spec), "--webhook", "http://127.0.0.1:9/hook")
    assert_short_error(result, "422", "webhook.url", "loopback")


def test_no_api_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_diffq("submit", "--model", "tiny-sd", "--prompt", "x", "--api-url", url)
    assert_short_error(result, f"can't reach the diffq API at {url}", "diffq api")
    assert_short_error(run_diffq("jobs", "--api-url", url), "can't reach")


def test_bad_ids_and_missing_files(stack, tmp_path) -> None:
    assert_short_error(diffq(stack, "watch", "not-an-id"), "'not-an-id' is not a job or batch id")
    unknown = str(uuid.uuid4())
    assert_short_error(diffq(stack, "watch", unknown), f"no job or batch with id {unknown}")
    assert_short_error(diffq(stack, "show", unknown), f"no job with id {unknown}")
    assert_short_error(diffq(stack, "download", "12345"), "not a job or batch id")
    assert_short_error(diffq(stack, "upload", str(tmp_path / "missing.png")), "can't read", "missing.png")
    assert_short_error(diffq(stack, "submit", "--file", str(tmp_path / "missing.json")), "can't read")


def test_upload_of_a_non_image_names_what_was_sent(stack, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n")
    result = diffq(stack, "upload", str(notes))
    assert_short_error(result, "422", "file: not a decodable image")
    assert "BytesIO" not in result.stderr and "object at 0x" not in result.stderr
    assert f"{len(notes.read_bytes())} bytes" in result.stderr


def test_jobs_show_and_download(stack, client, tmp_path) -> None:
    first = client.submit(text2img_spec(num_inference_steps=2, num_images=2, seed=5))
    second = client.submit(text2img_spec(num_inference_steps=2, num_images=1, seed=6))
    done = wait_finished(client, second["id"])
    wait_finished(client, first["id"])

    listed = diffq(stack, "jobs", "--type", "text2img", "--status", "succeeded", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    ids = [line.split()[0] for line in listed.stdout.splitlines()]
    assert ids.index(second["id"]) < ids.index(first["id"])  # newest first
    assert all(" succeeded " in line and " text2img " in line for line in listed.stdout.splitlines())
    none = diffq(stack, "jobs", "--type", "inpaint", "--status", "canceled")
    assert none.returncode == 0 and second["id"] not in none.stdout
    usage = diffq(stack, "jobs", "--status", "done")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "Error: Invalid value for '--status'" in usage.stderr, usage.stderr
    assert "'done' is not one of" in usage.stderr, usage.stderr

    shown = diffq(stack, "show", second["id"])
    assert shown.returncode == 0, shown.stderr
    assert "status:       succeeded" in shown.stdout
    assert re.search(r"^progress: +step (\d+)/\1$", shown.stdout, flags=re.MULTILINE), shown.stdout
    assert done["outputs"][0]["url"].split("?")[0] in shown.stdout  # presigned: signed anew each time

    folder = tmp_path / "one"
    downloaded = diffq(stack, "download", first["id"], "--dir", str(folder))
    assert downloaded.returncode == 0, downloaded.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png"]
    assert read_png_parameters((folder / "1.png").read_bytes())["params"]["seed"] == 6  # seed + 1


def test_batch_watch_and_download(stack, client, tmp_path) -> None:
    body = {"jobs": [text2img_spec(num_inference_steps=2, num_images=1, seed=s) for s in (1, 2)]}
    batch = client.submit_batch(body)
    watched = diffq(stack, "watch", batch["id"])
    assert watched.returncode == 0, watched.stderr
    assert f"batch {batch['id']} succeeded: 2 succeeded" in watched.stdout
    wait_batch_done(client, batch["id"])

    listed = diffq(stack, "jobs", "--batch", batch["id"])
    assert len(listed.stdout.splitlines()) == 2, listed.stdout

    downloaded = diffq(stack, "download", batch["id"], "--dir", str(tmp_path / "b"))
    assert downloaded.returncode == 0, downloaded.stderr
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["0_0.png", "1_0.png", "manifest.csv", "manifest.json"]
    with Image.open(tmp_path / "b" / "1_0.png") as image:
        assert image.size == (64, 64)


def test_watch_of_a_batch_canceled_mid_run_leaves_no_running_line(stack, client) -> None:
    """The batch's first job is canceled while it runs (its last step event comes after the cancel's):
    the watch says it was canceled, draws nothing of it after, never 'None', and ends with the counts."""
    body = {"jobs": [text2img_spec(num_inference_steps=999, num_images=1, seed=s) for s in (1, 2, 3)]}
    batch = client.submit_batch(body)
    deadline = time.monotonic() + 60
    while not any((job.get("progress") or {}).get("step") for job in client.batch(batch["id"])["running"]):
        assert time.monotonic() < deadline, client.batch(batch["id"])
        time.sleep(0.05)
    running = client.batch(batch["id"])["running"]  # one or more (a worker may run jobs fused)
    assert diffq(stack, "cancel", "--batch", batch["id"]).returncode == 0
    for job in running:
        wait_finished(client, job["id"])
    watched = diffq(stack, "watch", batch["id"])
    assert watched.returncode == 1, watched.stderr
    lines = watched.stdout.splitlines()
    for job in running:
        line = f"#{job['batch_index']} {job['id'][:8]}"
        assert f"{line} canceled" in lines, watched.stdout
        assert not any(line in later for later in lines[lines.index(f"{line} canceled") + 1 :]), (
            watched.stdout
        )
    assert "None" not in watched.stdout + watched.stderr
    assert lines[-1] == f"batch {batch['id']} canceled: 3 canceled", watched.stdout


def test_watch_of_a_canceled_job_says_canceled(stack, client) -> None:
    job_id = submit_to_queue(NOBODY_QUEUE, text2img_spec(num_images=1))
    canceled = diffq(stack, "cancel", job_id)
    assert canceled.stdout.strip() == f"{job_id} canceled", canceled.stderr
    watched = diffq(stack, "watch", job_id)
    assert watched.returncode == 1
    assert watched.stderr.strip().splitlines()[-1] == f"job {job_id} canceled"
    assert "None" not in watched.stderr
    # It never will have images: download says why, not to wait for it.
    assert_short_error(diffq(stack, "download", job_id), f"job {job_id} canceled; it made no images")


def test_cancel_of_a_batch_id_without_batch_says_to_pass_it(stack, client) -> None:
    batch = client.submit_batch({"jobs": [text2img_spec(num_images=1)], "priority": 0})
    refused = diffq(stack, "cancel", batch["id"])
    assert_short_error(refused, f"{batch['id']} is a batch id; cancel the batch with `diffq cancel --batch")


def test_config_prints_the_settings_with_secrets_masked(tmp_path) -> None:
    env = {
        "DIFFQ_HOME": str(tmp_path / "home"),
        "DIFFQ_DATABASE_URL": "postgresql+psycopg://diffq:hunter2@db.example:5432/diffq",
        "DIFFQ_BROKER_URL": "redis://:s3cret@redis.example:6379/0",
        "DIFFQ_MODELS_DIR": "",  # the default, under DIFFQ_HOME
    }
    result = run_diffq("config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hunter2" not in out and "s3cret" not in out
    assert "postgresql+psycopg://diffq:***@db.example:5432/diffq" in out
    assert "redis://:***@redis.example:6379/0" in out
    assert f"models dir:  {tmp_path / 'home' / 'models'}" in out
    assert "API URL:" in out


def test_default_home_is_per_user_not_per_directory(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_")}
    env |= {"PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(tmp_path / "data")}
    homes = set()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "cli", "config"],
            cwd=tmp_path / folder,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        homes.add(result.stdout.splitlines()[0].split()[1])
    assert homes == {str(tmp_path / "data" / "diffq")}


def test_workers_without_a_database_is_one_error(tmp_path) -> None:
    result = run_diffq("workers", env={"DIFFQ_HOME": str(tmp_path), "DIFFQ_DATABASE_URL": ""}, cwd=tmp_path)
    assert_short_error(result, "diffq db upgrade")


def test_db_upgrade_creates_a_missing_postgres_database() -> None:
    name = f"{TEST_DB}_fresh"
    admin = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    try:
        result = run_diffq("db", "upgrade", env={"DIFFQ_DATABASE_URL": f"{PG_SERVER}/{name}"})
        assert result.returncode == 0, result.stderr
        assert f"created the database {PG_SERVER}/{name}" in result.stdout
        again = run_diffq("db", "upgrade", env={"DIFFQ_DATABASE_URL": f"{PG_SERVER}/{name}"})
        assert again.returncode == 0 and "created" not in again.stdout, again.stdout
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    refused = run_diffq(
        "db", "upgrade", env={"DIFFQ_DATABASE_URL": f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x"}
    )
    assert_short_error(refused, "can't connect")


def test_servers_on_a_database_without_the_schema_say_so_in_one_line(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    for command in ("api", "worker", "beat"):
        result = run_diffq(command, env={"DIFFQ_DATABASE_URL": url, "DIFFQ_HOME": str(tmp_path)})
        # The models' import may print a library warning first; the error itself is one line.
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and "Traceback" not in result.stderr, (command, result.stderr)
        assert len(errors) == 1 and "diffq db upgrade" in errors[0], (command, result.stderr)
