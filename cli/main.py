"""The `diffq` command line."""

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from core.config import get_settings

app = typer.Typer(help="diffq: a job queue for diffusion models.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
models_app = typer.Typer(help="The local model store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")

ApiUrl = Annotated[str | None, typer.Option(help="API base URL (default: DIFFQ_PUBLIC_URL).")]


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the submission API."""
    import uvicorn

    uvicorn.run("api.main:app", host=host, port=port)


@app.command()
def worker(
    loglevel: str = "INFO",
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: DIFFQ_QUEUE).")] = None,
    name: Annotated[str, typer.Option(help="Celery node name.")] = "diffq@%h",
) -> None:
    """Start a worker that runs jobs, one at a time."""
    from workers.celery_app import app as celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--queues={queues or get_settings().queue}",
            "--concurrency=1",
            "--pool=prefork",
            f"--hostname={name}",
            "--task-events",
        ]
    )


@app.command()
def beat(loglevel: str = "INFO") -> None:
    """Start the single beat process: due schedules become jobs, lost jobs are requeued."""
    from workers.celery_app import app as celery_app

    celery_app.start(["beat", f"--loglevel={loglevel}", "--scheduler=workers.beat:DiffqScheduler"])


@app.command()
def reconcile() -> None:
    """Requeue jobs whose worker died, once (beat does this every DIFFQ_RECONCILE_INTERVAL_S)."""
    from core.reconcile import reconcile_once

    typer.echo(json.dumps(reconcile_once()))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or upgrade the database schema."""
    from migrations.run import upgrade

    upgrade(revision)
    typer.echo(f"database at {get_settings().database_url} is at {revision}")


@models_app.command("make-tiny")
def make_tiny(overwrite: bool = False) -> None:
    """Write small random-weight models (tiny-sd, tiny-ddpm) into the models dir."""
    from models_store.tiny import make_tiny_models

    for path in make_tiny_models(get_settings().models_dir, overwrite=overwrite):
        typer.echo(path)


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@app.command()
def submit(
    file: Annotated[Path | None, typer.Option(help="A JSON job spec.")] = None,
    type: str = "text2img",
    model: str | None = None,
    prompt: str | None = None,
    param: Annotated[list[str] | None, typer.Option(help="key=value, repeatable.")] = None,
    api_url: ApiUrl = None,
) -> None:
    """Submit a job and print its id."""
    from cli.client import ApiError, Client

    if file:
        spec = json.loads(file.read_text())
    else:
        if not model:
            raise typer.BadParameter("pass --model or --file")
        params = _parse_params(param or [])
        if prompt is not None:
            params["prompt"] = prompt
        spec = {"type": type, "model": model, "params": params}
    try:
        job = Client(api_url or get_settings().public_url).submit(spec)
    except ApiError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    typer.echo(job["id"])


@app.command()
def watch(job_id: str, api_url: ApiUrl = None) -> None:
    """Show a job's progress until it ends; exit 1 unless it succeeded."""
    from cli.client import Client
    from cli.progress import watch_jobs

    jobs = watch_jobs(Client(api_url or get_settings().public_url), [job_id])
    job = jobs[0]
    for output in job["outputs"]:
        typer.echo(output["url"])
    if job["status"] != "succeeded":
        typer.echo(f"job {job_id} {job['status']}: {job.get('error')}", err=True)
        raise typer.Exit(1)


@app.command()
def quickstart(
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of 16 steps each.")] = 90,
    num_images: Annotated[int, typer.Option(min=1, max=16, help="Images to generate.")] = 16,
    inference_steps: Annotated[int, typer.Option(min=1, max=1000, help="DDPM steps per image.")] = 1000,
) -> None:
    """Run diffq end to end on embedded defaults: train a small model on the built-in glyphs dataset
    through a job, then generate a grid of images with it."""
    from cli.quickstart import run_quickstart

    raise typer.Exit(run_quickstart(epochs=epochs, num_images=num_images, inference_steps=inference_steps))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
