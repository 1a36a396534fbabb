"""The offline quickstart: everything on embedded defaults, nothing to install or start first.

It trains a small unconditional model on the built-in glyphs dataset, which registers it, then
generates a grid of images with it: both through the job system (API → broker → worker → storage).
"""

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from cli.client import Client, CliError
from cli.progress import watch_jobs
from core.auth import create_key, revoke_key
from core.config import get_settings
from core.db import db_session
from core.storage import LocalStorage, get_storage
from core.tables import DEFAULT_OWNER

# Warnings the quickstart's user can't act on: transformers' about torchvision, Celery's about
# running as root (the quickstart's worker reads only its own local broker). The worker's log goes to
# a file, named when a job fails.
QUIET = {"PYTHONWARNINGS": "ignore::UserWarning", "TRANSFORMERS_VERBOSITY": "error"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiThread:
    """The API served by uvicorn in a thread of this process, until `stop()`."""

    def __init__(self, port: int) -> None:
        import uvicorn

        config = uvicorn.Config("api.main:app", host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="diffq-quickstart-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10) -> None:
        """Shut the server down and wait for its thread: a server thread still running while the
        interpreter exits can crash it (a segmentation fault after the quickstart's last line)."""
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_api(port: int) -> ApiThread:
    """The API on `port` of 127.0.0.1, served from a thread of this process (tests and benchmarks)."""
    return ApiThread(port)


QUICKSTART_MODEL = "quickstart-glyphs"
IMAGE_SIZE = 16
# Small enough to train in about two minutes on two CPU cores, big enough to draw the shapes.
UNET_SHAPE = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 16,
}
# The training job's own sample grids use the training scheduler (DDPM), strided to this many steps.
SAMPLE_STEPS = 50
# The grid is saved this many times larger than the images, so that 16 px glyphs can be seen.
GRID_ZOOM = 8


def training_spec(epochs: int, name: str = QUICKSTART_MODEL) -> dict[str, Any]:
    """A train_unconditional job on the built-in glyphs: 256 images of 16 px, 16 steps per epoch."""
    return {
        "type": "train_unconditional",
        "output_model": name,
        "overwrite_output_model": True,  # run_quickstart says so when it replaces an earlier model
        "params": {
            "dataset": "builtin:glyphs",
            "image_size": IMAGE_SIZE,
            "train_batch_size": 16,
            "num_epochs": epochs,
            "learning_rate": 1e-3,
            "lr_warmup_steps": 50,
            # At 16 px the linear schedule leaves little signal in most timesteps; the cosine one
            # trains on all of them (Nichol & Dhariwal), and the EMA of the weights samples cleaner.
            "beta_schedule": "squaredcos_cap_v2",
            "use_ema": True,
            "save_image_epochs": max(1, epochs // 2),
            "save_model_epochs": epochs,
            "checkpointing_steps": 500,
            "sample_inference_steps": SAMPLE_STEPS,
            "eval_batch_size": 16,
            "seed": 0,
            **UNET_SHAPE,
        },
    }


def generation_spec(name: str, inference_steps: int, scheduler: str, num_images: int) -> dict[str, Any]:
    """The unconditional job that draws the grid with the trained model `name`."""
    return {
        "type": "unconditional",
        "model": name,
        "params": {
            "num_inference_steps": inference_steps,
            "scheduler": scheduler,
            "seed": 0,
            "num_images": num_images,
        },
    }


# The option of `diffq quickstart` behind each field of its jobs.
OPTIONS = {
    "scheduler": "--scheduler",
    "num_inference_steps": "--inference-steps",
    "num_images": "--num-images",
    "output_model": "--name",
    "model": "--name",
    "num_epochs": "--epochs",
}


def quickstart_problems(
    epochs: int, num_images: int, inference_steps: int, scheduler: str, name: str
) -> list[str]:
    """Why the quickstart's jobs with these options would be refused, one line per problem naming its
    option (`--scheduler bogus: ...`); empty if the API would accept both. Checked before anything runs,
    so that a bad generation option does not wait for the training to end. The checks are the API's
    own: the job schemas, the deployment's limits, and the grid's scheduler's steps on the model the
    training makes (a DDPM schedule of `num_train_timesteps`)."""
    from pydantic import ValidationError

    from core.scheduler_limits import steps_problem
    from core.schedulers import SCHEDULERS
    from core.specs import JOB_SPEC, TrainUnconditionalParams
    from core.submit import limit_problems

    problems: list[str] = []
    config: dict[str, Any] | None = None  # the trained model's scheduler config, once its spec is valid
    given: dict[str, Any] = {
        "--scheduler": scheduler,
        "--name": name,
        "--epochs": epochs,
        "--num-images": num_images,
        "--inference-steps": inference_steps,
    }
    for spec in (training_spec(epochs, name), generation_spec(name, inference_steps, scheduler, num_images)):
        try:
            parsed = JOB_SPEC.validate_python(spec)
        except ValidationError as error:
            for detail in error.errors():
                fields = [str(part) for part in detail["loc"] if str(part) in OPTIONS]
                option = OPTIONS[fields[-1]] if fields else f"the {spec['type']} job"
                shown = f" {given[option]}" if option in given else ""
                problems.append(f"{option}{shown}: {detail['msg']}")
            continue
        problems += [
            f"{spec['type']} job: {message}"
            for _, message, _ in limit_problems(parsed.params, get_settings())
        ]
        if spec["type"] == "train_unconditional":
            assert isinstance(parsed.params, TrainUnconditionalParams)
            config = {
                "num_train_timesteps": parsed.params.num_train_timesteps,
                "beta_schedule": parsed.params.beta_schedule,
            }
    choice = SCHEDULERS.get(scheduler)
    if config is not None and choice is not None:
        class_name, overrides = choice.class_name, choice.overrides
        if problem := steps_problem(name, scheduler, class_name, config, overrides, inference_steps):
            problems.append(f"--inference-steps {inference_steps}: {problem}")
    return problems


def free_grid_path(home: Path) -> Path:
    """`quickstart-grid.png`, or the first of `quickstart-grid-2.png`, … that does not exist yet."""
    path, number = home / "quickstart-grid.png", 1
    while path.exists():
        number += 1
        path = home / f"quickstart-grid-{number}.png"
    return path


def run_quickstart(epochs: int, num_images: int, inference_steps: int, scheduler: str, name: str) -> int:
    from diffusers.utils import make_image_grid
    from PIL import Image

    from migrations.run import upgrade
    from workers.training import grid_shape

    if problems := quickstart_problems(epochs, num_images, inference_steps, scheduler, name):
        raise CliError("; ".join(problems))
    settings = get_settings()
    typer.echo(f"diffq home: {settings.home}")
    typer.echo("1/4 creating the database ...")
    upgrade()
    # A key of the quickstart's own, for the `default` owner; revoked when it ends.
    with db_session() as session:
        key_row, api_key = create_key(session, DEFAULT_OWNER, name="quickstart")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    typer.echo(f"2/4 starting the API at {url} and one worker ...")
    api = start_api(port)
    # One torch thread: the quickstart's model is so small that a second thread only waits on the
    # first, and on a busy machine the spinning threads make each step several times slower.
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    queues = ",".join(dict.fromkeys(q for q in (settings.queue, settings.train_queue) if q))
    log_path = settings.home / "quickstart-worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--loglevel", "WARNING", "--queues", queues],
        env=QUIET | os.environ | threads | {"DIFFQ_PUBLIC_URL": url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = Client(url, api_key=api_key)
        earlier = client.request("GET", f"/v1/models/{name}")
        if earlier.status_code == 200:
            typer.echo(
                f"    this run replaces the model '{name}' of an earlier run "
                f"(job {earlier.json()['job_id']}); pass --name to keep both"
            )
        training = client.submit(training_spec(epochs, name))
        typer.echo(
            f"3/4 training '{name}', a UNet2DModel, on builtin:glyphs for {epochs} epochs "
            f"(job {training['id']}) ..."
        )
        [training] = watch_jobs(client, [training["id"]])
        report(training)
        if training["status"] != "succeeded":
            typer.echo(f"the worker's log: {log_path}")
            return 1
        steps = f"{inference_steps} {scheduler} steps"
        typer.echo(f"4/4 generating {num_images} images with '{name}' ({steps}) ...")
        generation = client.submit(generation_spec(name, inference_steps, scheduler, num_images))
        [generation] = watch_jobs(client, [generation["id"]])
        report(generation)
        if generation["status"] != "succeeded":
            typer.echo(f"the worker's log: {log_path}")
            return 1
    finally:
        with db_session() as session:
            revoke_key(session, key_row.id)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # mid-job after a failure: don't leave it running
            worker.kill()
            worker.wait()
        log.close()
        api.stop()

    storage = get_storage()
    images = [Image.open(io.BytesIO(storage.get(output["key"]))) for output in generation["outputs"]]
    rows, cols = grid_shape(len(images))
    grid = make_image_grid(images, rows=rows, cols=cols)
    grid = grid.resize((grid.width * GRID_ZOOM, grid.height * GRID_ZOOM), Image.Resampling.NEAREST)
    grid_path = free_grid_path(settings.home)
    grid.save(grid_path)
    typer.echo(f"the grid of generated glyphs ({rows}×{cols}, shown {GRID_ZOOM}× larger): {grid_path}")
    typer.echo(
        f"its jobs belong to the owner '{DEFAULT_OWNER}'; to look at them with the API or `diffq jobs`: "
        f"export DIFFQ_API_KEY=$(diffq keys create --owner {DEFAULT_OWNER})"
    )
    return 0


def report(job: dict[str, Any]) -> None:
    """Print how a job ended and where its files are."""
    storage = get_storage()
    worker = f" on {job['worker']}" if job.get("worker") else ""  # none: it never ran
    typer.echo(f"job {job['id']} ({job['type']}) {job['status']}{worker}")
    if job["error"]:
        typer.echo(f"  error: {job['error']}")
    for output in job["outputs"]:
        where = storage.path(output["key"]) if isinstance(storage, LocalStorage) else output["url"]
        label = output.get("kind") or "image"
        if output.get("epoch") is not None:
            label += f" (epoch {output['epoch'] + 1})"
        typer.echo(f"  {label}: {where}")
