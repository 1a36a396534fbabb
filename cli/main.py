"""The `diffq` command line."""

import json
import os
import time
from enum import StrEnum
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


class Serve(StrEnum):
    generation = "generation"
    training = "training"
    both = "both"


@app.command()
def worker(
    loglevel: str = "INFO",
    gpus: Annotated[
        str | None,
        typer.Option(
            help="'all' or device ids like '0,2': one worker process per CUDA device, each named gpuN@host "
            "(with no GPU, 'all' runs one CPU worker). Without it: one worker on DIFFQ_DEVICE."
        ),
    ] = None,
    serve: Annotated[
        Serve,
        typer.Option(help="Jobs to take: generation (DIFFQ_QUEUE), training (DIFFQ_TRAIN_QUEUE) or both."),
    ] = Serve.both,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues to consume instead of those --serve picks.")
    ] = None,
    name: Annotated[str, typer.Option(help="Celery node name.")] = "diffq@%h",
) -> None:
    """Start a worker that runs jobs, one at a time (or, with --gpus, one such worker per GPU)."""
    if gpus is not None:
        import logging

        from workers.supervisor import Supervisor, detect_gpus, parse_gpus, plan_workers

        logging.basicConfig(
            level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s"
        )

        worker_args = ["--serve", serve.value, "--loglevel", loglevel]
        if queues:
            worker_args += ["--queues", queues]
        try:
            specs = plan_workers(parse_gpus(gpus), detect_gpus(), worker_args, dict(os.environ))
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--gpus") from None
        raise typer.Exit(Supervisor(specs).run())

    from celery.utils.nodenames import default_nodename, host_format

    from core.routing import worker_queues
    from workers.celery_app import app as celery_app

    node = host_format(default_nodename(name))
    consumed = queues.split(",") if queues else worker_queues(serve.value, node, get_settings())
    status = celery_app.start(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--queues={','.join(consumed)}",
            "--concurrency=1",
            "--pool=prefork",
            f"--hostname={node}",
            "--task-events",
        ]
    )
    raise typer.Exit(status or 0)


@app.command()
def workers(
    require: Annotated[
        list[str] | None,
        typer.Option(help="A worker node name (gpu0@host) that must be live; exit 1 if one is not."),
    ] = None,
) -> None:
    """List the live workers: device, busy or idle, loaded models, cache hits and misses."""
    from core.db import db_session
    from core.worker_nodes import live_workers, resident_models

    with db_session() as session:
        live = live_workers(session, get_settings().worker_stale_s)
    for row in live:
        state = f"busy with {row.current_job}" if row.current_job else "idle"
        models = ", ".join(sorted(resident_models(row))) or "-"
        typer.echo(
            f"{row.name}\t{row.device}\t{state}\tmodels: {models}\t"
            f"cache hits {row.cache_hits} misses {row.cache_misses}\tjobs {row.jobs_run}"
        )
    missing = set(require or []) - {row.name for row in live}
    if missing:
        typer.echo(f"not live: {', '.join(sorted(missing))}", err=True)
        raise typer.Exit(1)


@app.command()
def flower(
    address: str = "127.0.0.1",
    port: int = 5555,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Run without basic auth (local use only).")
    ] = False,
) -> None:
    """Start Flower against the broker, behind basic auth from DIFFQ_FLOWER_USER / DIFFQ_FLOWER_PASSWORD."""
    from core.queue import get_celery

    settings = get_settings()
    argv = ["flower", f"--address={address}", f"--port={port}"]
    if settings.flower_user and settings.flower_password:
        argv.append(f"--basic-auth={settings.flower_user}:{settings.flower_password}")
    elif not no_auth:
        raise typer.BadParameter(
            "set DIFFQ_FLOWER_USER and DIFFQ_FLOWER_PASSWORD, or pass --no-auth to run Flower open",
            param_hint="--no-auth",
        )
    get_celery().start(argv)


@app.command()
def beat(loglevel: str = "INFO") -> None:
    """Start the single beat process: due schedules become jobs, lost jobs are requeued."""
    from workers.celery_app import app as celery_app

    celery_app.start(["beat", f"--loglevel={loglevel}", "--scheduler=workers.beat:DiffqScheduler"])


@app.command()
def reconcile(
    resend_queued: Annotated[
        bool, typer.Option(help="Send every queued job again (after restoring or emptying the broker).")
    ] = False,
) -> None:
    """Requeue jobs whose worker died and send queued jobs the broker lacks, once (beat does
    this every DIFFQ_RECONCILE_INTERVAL_S)."""
    from core.db import db_session
    from core.reconcile import reconcile_once

    with db_session() as session:
        counts = reconcile_once(session, resend_queued=resend_queued)
    typer.echo(json.dumps(counts))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or upgrade the database schema."""
    from migrations.run import upgrade

    upgrade(revision)
    typer.echo(f"database at {get_settings().database_url} is at {revision}")


@models_app.command("make-tiny")
def make_tiny(overwrite: bool = False) -> None:
    """Write small random-weight models (tiny-sd, tiny-ddpm, tiny-sd-depth) into the models dir."""
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
def batch(
    file: Annotated[Path, typer.Argument(help="JSON Lines: one job a line, its params or a whole spec.")],
    model: Annotated[str | None, typer.Option(help="Model of the lines that name none.")] = None,
    type: Annotated[str, typer.Option(help="Job type of the lines that name none.")] = "text2img",
    name: Annotated[str | None, typer.Option(help="A name for the batch.")] = None,
    watch: Annotated[bool, typer.Option(help="Show progress until every job has ended.")] = False,
    download: Annotated[
        Path | None, typer.Option(help="When done, write the outputs and manifests into this folder.")
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Submit a batch from a JSON Lines file and print its id.

    A line like {"prompt": "a cat", "seed": 1} is the params of one job of --type on --model; a line
    with a "params" key is a whole job spec, whose type and model default to --type and --model.
    With --watch or --download, exit 1 unless every job succeeded.
    """
    from cli.client import ApiError, Client
    from cli.download import download_batch
    from cli.progress import watch_batch

    client = Client(api_url or get_settings().public_url)
    try:
        submitted = client.submit_batch_jsonl(file, type=type, model=model, name=name)
    except ApiError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    batch_id = submitted["id"]
    typer.echo(batch_id)
    if not (watch or download):
        return
    if watch:
        final = watch_batch(client, batch_id)
    else:
        final = client.batch(batch_id)
        while not final["done"]:
            time.sleep(1.0)
            final = client.batch(batch_id)
    counts = ", ".join(f"{count} {status}" for status, count in final["counts"].items() if count)
    typer.echo(f"batch {batch_id} {final['status']}: {counts}")
    if download:
        paths = download_batch(client, batch_id, download)
        typer.echo(f"{len(paths)} images and the manifests in {download}")
    if final["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def cancel(
    ids: Annotated[list[str], typer.Argument(help="Job ids, or batch ids with --batch.")],
    batch: Annotated[bool, typer.Option("--batch", help="The ids are batch ids.")] = False,
    api_url: ApiUrl = None,
) -> None:
    """Cancel jobs or batches: queued jobs never run, running ones stop at their next step."""
    from cli.client import ApiError, Client

    client = Client(api_url or get_settings().public_url)
    failed = False
    for item in ids:
        try:
            result = client.cancel_batch(item) if batch else client.cancel(item)
        except ApiError as error:
            typer.echo(str(error), err=True)
            failed = True
            continue
        typer.echo(f"{item} {result['status']}")
    if failed:
        raise typer.Exit(1)


@app.command()
def upload(file: Path, api_url: ApiUrl = None) -> None:
    """Upload an input image; print the reference a job's params take (e.g. --param image=...)."""
    from cli.client import ApiError, Client

    try:
        uploaded = Client(api_url or get_settings().public_url).upload(file)
    except ApiError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(uploaded["image"]))


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
