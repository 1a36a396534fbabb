"""The `diffq` command line."""

import json
import logging
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from cli.keys import keys_app
from core.config import get_settings

if TYPE_CHECKING:
    from cli.client import Client

# Plain (not boxed) help and usage errors: a usage error is a usage line and one `Error:` line.
app = typer.Typer(
    help="diffq: a job queue for diffusion models.", no_args_is_help=True, rich_markup_mode=None
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True, rich_markup_mode=None)
models_app = typer.Typer(help="The local model store.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")

# The quickstart's defaults. Measured on the 2-core machine: 40 epochs (640 steps) of the
# quickstart's UNet, sampled with 50 or 100 strided DDPM steps, draw clean coloured squares, crosses
# and discs; DDIM or DPM-Solver++ at 25-50 steps give muddy or saturated noise from a model this
# briefly trained (they do not correct its errors as DDPM's fresh noise does).
QUICKSTART_EPOCHS = 40
QUICKSTART_STEPS = 100
QUICKSTART_SCHEDULER = "ddpm"

ApiUrl = Annotated[str | None, typer.Option(help="API base URL (default: DIFFQ_PUBLIC_URL).")]


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the submission API."""
    import uvicorn

    _require_schema()
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
        str | None,
        typer.Option(
            help="Comma-separated queues to serve instead of those --serve picks (besides its own)."
        ),
    ] = None,
    name: Annotated[
        str,
        typer.Option(help="Celery node name, unique in the fleet: a second worker on a host needs its own."),
    ] = "diffq@%h",
) -> None:
    """Start a worker that runs jobs, one at a time (or, with --gpus, one such worker per GPU)."""
    _require_schema()
    if gpus is not None:
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

    from cli.client import CliError
    from core.scheduling import worker_queues
    from workers.celery_app import app as celery_app
    from workers.fleet import name_in_use

    node = host_format(default_nodename(name))
    if problem := name_in_use(node):
        raise CliError(problem)
    given = [queue for queue in (queues or "").split(",") if queue]
    consumed = worker_queues(serve.value, node, get_settings(), given)
    status = celery_app.start(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--queues={','.join(consumed)}",
            "--concurrency=1",
            "--pool=prefork",
            f"--hostname={node}",
            "--task-events",
            # Startup sync and gossip with other workers serve Celery's revokes and elections, which
            # diffq does not use (a cancel goes through the jobs table and Redis); mingle alone costs
            # a second at every start.
            "--without-mingle",
            "--without-gossip",
        ]
    )
    # The worker has stopped: its pool joined, its jobs ended, its connections closed. Leave without the
    # interpreter's teardown of torch and diffusers, which takes seconds and frees nothing that matters.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


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
def beat(
    loglevel: str = "INFO",
    webhooks: Annotated[
        bool, typer.Option(help="Send webhooks from this process too (else run `diffq webhooks`).")
    ] = True,
) -> None:
    """Start the single beat process: due schedules become jobs, lost jobs are requeued, webhooks are sent."""
    # The shared app, not the worker's (workers.celery_app): beat only sends tasks by name, and the
    # worker's task modules import torch and diffusers (seconds at every start).
    import workers.beat
    from core.queue import get_celery

    _require_schema()
    workers.beat.SEND_WEBHOOKS = webhooks
    get_celery().start(["beat", f"--loglevel={loglevel}", "--scheduler=workers.beat:DiffqScheduler"])


@app.command("webhooks")
def send_webhooks(
    threads: Annotated[
        int | None, typer.Option(min=1, help="Deliveries sent at once (default: DIFFQ_WEBHOOK_THREADS).")
    ] = None,
    once: Annotated[
        bool, typer.Option(help="Send the deliveries due now, wait for their attempts, and exit.")
    ] = False,
) -> None:
    """Send webhook deliveries until stopped. `diffq beat` does this too; run more of these for more
    throughput (they share the work safely on Postgres)."""
    import contextlib
    import logging
    import signal

    from core.webhooks import Dispatcher

    _require_schema()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dispatcher = Dispatcher(threads)
    if once:
        attempts = 0
        while started := dispatcher.dispatch_once():
            attempts += started
            dispatcher.wait_idle()
        dispatcher.stop()
        typer.echo(f"webhook attempts made: {attempts}")
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl+C does
    typer.echo(f"sending webhooks with {dispatcher.threads} threads; Ctrl+C stops")
    with contextlib.suppress(KeyboardInterrupt):
        dispatcher.run()
    dispatcher.stop(wait_s=get_settings().webhook_timeout_s)


@app.command()
def reconcile() -> None:
    """Requeue the jobs whose worker died (their lease ran out), once (beat does this every
    DIFFQ_RECONCILE_INTERVAL_S)."""
    from core.db import db_session
    from core.reconcile import reconcile_once

    with db_session() as session:
        counts = reconcile_once(session)
    typer.echo(reconcile_summary(counts))


def reconcile_summary(counts: dict[str, int]) -> str:
    """What a reconciler pass did (`reconcile_once`'s counts), in words."""
    if not counts:
        return "nothing to do: no running job's lease had run out"
    done = []
    if requeued := counts.get("requeued"):
        jobs = "job" if requeued == 1 else "jobs"
        done.append(f"requeued {requeued} {jobs} whose worker died (lease ran out)")
    if lost := counts.get("worker_lost"):
        jobs = "job" if lost == 1 else "jobs"
        done.append(f"failed {lost} {jobs} with worker_lost (attempts used up)")
    done += [f"{name}: {count}" for name, count in counts.items() if name not in ("requeued", "worker_lost")]
    return "; ".join(done)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or upgrade the database schema."""
    from migrations.run import upgrade

    url = _masked(get_settings().database_url)
    if upgrade(revision):
        typer.echo(f"created the database {url}")
    typer.echo(f"database at {url} is at {revision}")


@models_app.command("make-tiny")
def make_tiny(overwrite: bool = False) -> None:
    """Write small random-weight models (tiny-sd, tiny-ddpm, tiny-sd-depth) into the models dir."""
    from models_store.tiny import make_tiny_models

    for path in make_tiny_models(get_settings().models_dir, overwrite=overwrite):
        typer.echo(path)


def _parse_params(pairs: list[str], prompt: str | None = None) -> dict[str, Any]:
    """The params of `--param key=value` options (a value is JSON where it parses as JSON, else text),
    with `prompt` when given. BadParameter (a usage error, exit 2) for a pair without `=` or a key, or a
    key given twice (`--prompt` counts as `prompt`)."""
    params: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--param takes key=value, got {pair!r}", param_hint="--param")
        if key in params:
            given = "--prompt and --param prompt=..." if key == "prompt" and prompt is not None else None
            raise typer.BadParameter(
                f"{key!r} is given twice ({given or f'--param {key}=... twice'}); give it once",
                param_hint="--param",
            )
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


Priority = Annotated[
    int | None, typer.Option(help="Higher runs first (0 by default; your key may limit how high).")
]
Webhook = Annotated[
    str | None, typer.Option(help="A URL to POST the job's (or batch's) signed events to (see Webhooks).")
]


@app.command()
def submit(
    file: Annotated[Path | None, typer.Option(help="A JSON job spec.")] = None,
    type: str = "text2img",
    model: str | None = None,
    prompt: str | None = None,
    param: Annotated[list[str] | None, typer.Option(help="key=value, repeatable.")] = None,
    priority: Priority = None,
    webhook: Webhook = None,
    api_url: ApiUrl = None,
) -> None:
    """Submit a job and print its id. --priority and --webhook override those of a --file spec."""
    from cli.client import Client, CliError

    if file:
        spec = _read_json(file)
    else:
        if not model:
            raise CliError(
                "pass --model (a folder in DIFFQ_MODELS_DIR such as tiny-sd, a registered model from "
                "GET /v1/models, or a Hub id) or --file"
            )
        params = _parse_params(param or [], prompt)
        spec = {"type": type, "model": model, "params": params}
    if priority is not None:
        spec["priority"] = priority
    if webhook is not None:
        spec["webhook"] = {"url": webhook}
    job = Client(api_url or get_settings().public_url).submit(spec)
    typer.echo(job["id"])


def _read_json(path: Path) -> Any:
    from cli.client import CliError

    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise CliError(f"can't read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise CliError(f"{path} is not JSON: {error}") from None


@app.command()
def watch(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="A job id or a batch id.")],
    api_url: ApiUrl = None,
) -> None:
    """Show a job's or a batch's progress until it ends, then where its images are; exit 1 unless it
    succeeded."""
    from cli.client import Client
    from cli.progress import watch_batch, watch_jobs

    client = Client(api_url or get_settings().public_url)
    kind, item = client.job_or_batch(item_id)
    if kind == "batch":
        final = watch_batch(client, item["id"])
        counts = ", ".join(f"{count} {status}" for status, count in final["counts"].items() if count)
        typer.echo(f"batch {item['id']} {final['status']}: {counts}")
        if final["status"] != "succeeded":
            raise typer.Exit(1)
        return
    [job] = watch_jobs(client, [item["id"]])
    for output in job["outputs"]:
        typer.echo(_where(output))
    if job["status"] != "succeeded":
        typer.echo(_ended(job), err=True)
        raise typer.Exit(1)


def _where(output: dict[str, Any]) -> str:
    """An output's local path when storage is a local folder here, else its URL."""
    from cli.download import local_path

    return str(local_path(output["key"]) or output["url"])


def _ended(job: dict[str, Any]) -> str:
    """'job <id> failed: <code>: <message>', or 'job <id> canceled'."""
    error = job.get("error")
    text = f"job {job['id']} {job['status']}"
    return f"{text}: {error['code']}: {error['message']}" if error else text


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


@app.command()
def jobs(
    status: Annotated[Status | None, typer.Option(help="Only jobs with this status.")] = None,
    type: Annotated[str | None, typer.Option(help="Only jobs of this type (text2img, ...).")] = None,
    batch: Annotated[str | None, typer.Option(help="Only the jobs of this batch, in batch order.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="The most jobs to list.")] = 20,
    api_url: ApiUrl = None,
) -> None:
    """List jobs, newest first: id, type, model, status, progress, when it was submitted."""
    from cli.client import Client, check_id

    batch_id = check_id(batch, "batch") if batch else None
    listed = Client(api_url or get_settings().public_url).jobs(
        status=status.value if status else None, type=type, batch_id=batch_id, limit=limit
    )
    if not listed["data"]:
        typer.echo("no jobs", err=True)
        return
    for job in listed["data"]:
        progress = job.get("progress") or {}
        steps = f"{progress.get('step', 0)}/{progress['total']}" if progress.get("total") else "-"
        created = job["created_at"][:19].replace("T", " ")
        error = f"  {job['error']['code']}" if job.get("error") else ""
        typer.echo(
            f"{job['id']}  {job['type']:<19} {job['model'] or job.get('output_model') or '-':<20} "
            f"{job['status']:<9} {steps:>9}  {created}{error}"
        )


@app.command()
def show(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job id.")], api_url: ApiUrl = None
) -> None:
    """Show one job: status, progress, error, outputs (local paths or URLs) and params."""
    from cli.client import ApiError, Client, CliError, check_id
    from cli.progress import clock

    client = Client(api_url or get_settings().public_url)
    try:
        job = client.job(check_id(job_id))
    except ApiError as error:
        if error.status_code == 404:
            raise CliError(f"no job with id {job_id} (`diffq jobs` lists the jobs)") from None
        raise
    progress = job.get("progress") or {}
    lines = [
        ("job", job["id"]),
        ("type", job["type"]),
        ("model", job["model"] or "-"),
        ("status", job["status"]),
    ]
    if job.get("output_model"):
        lines.append(("output model", job["output_model"]))
    if job.get("batch_id"):
        lines.append(("batch", f"{job['batch_id']} #{job['batch_index']}"))
    if progress.get("total"):
        text = f"step {progress.get('step', 0)}/{progress['total']}"
        if job["status"] == "running" and progress.get("eta_s") is not None:
            text += f", {clock(progress['eta_s'])} remaining"
        lines.append(("progress", text))
    if job.get("error"):
        lines.append(("error", f"{job['error']['code']}: {job['error']['message']}"))
    lines.append(("attempts", str(job["attempts"])))
    if job.get("worker"):
        lines.append(("worker", f"{job['worker']} on {job.get('device') or '?'}"))
    for label, key in (("submitted", "created_at"), ("started", "started_at"), ("finished", "finished_at")):
        if job.get(key):
            lines.append((label, job[key][:19].replace("T", " ")))
    lines.append(("params", json.dumps(job["params"], sort_keys=True)))
    for label, value in lines:
        typer.echo(f"{label + ':':<14}{value}")
    if job["outputs"]:
        typer.echo("outputs:")
        for output in job["outputs"]:
            typer.echo(f"  {_where(output)}")


DownloadDir = Annotated[Path | None, typer.Option("--dir", help="The folder to write into (default: ./ID).")]


@app.command()
def download(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="A job id or a batch id.")],
    dir: DownloadDir = None,
    api_url: ApiUrl = None,
) -> None:
    """Download a job's images, or a batch's images with its manifests, into a folder."""
    from cli.client import Client, CliError
    from cli.download import download_batch, download_job

    client = Client(api_url or get_settings().public_url)
    kind, item = client.job_or_batch(item_id)
    folder = dir or Path(item["id"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"can't use {folder} as the download folder: {error.strerror or error}") from None
    if kind == "batch":
        paths = download_batch(client, item["id"], folder)
        typer.echo(f"{len(paths)} images and the manifests of batch {item['id']} in {folder}")
        return
    if item["status"] != "succeeded" and not item["outputs"]:
        if item["status"] in ("queued", "running"):
            raise CliError(
                f"job {item['id']} is {item['status']}; it has no images yet (`diffq watch {item['id']}` "
                "waits for it)"
            )
        raise CliError(f"{_ended(item)}; it made no images")
    paths = download_job(client, item, folder)
    for path in paths:
        typer.echo(path)
    if not paths:
        raise CliError(f"job {item['id']} has no images to download")


@app.command()
def config() -> None:
    """Print the settings in use: database, broker, storage, models dir, API URL (secrets masked)."""
    settings = get_settings()
    masked = _masked
    broker = settings.broker_url
    if broker == "filesystem://":
        broker += f" (in {settings.broker_dir})"
    rows = [
        ("home", str(settings.home), "DIFFQ_HOME"),
        ("database", masked(settings.database_url), "DIFFQ_DATABASE_URL"),
        ("broker", masked(broker) if "://" in broker and "@" in broker else broker, "DIFFQ_BROKER_URL"),
        ("storage", settings.storage_url, "DIFFQ_STORAGE_URL"),
        ("models dir", str(settings.models_dir), "DIFFQ_MODELS_DIR"),
        ("API URL", settings.public_url, "DIFFQ_PUBLIC_URL"),
    ]
    if settings.s3_endpoint_url:
        rows.append(("S3 endpoint", settings.s3_endpoint_url, "DIFFQ_S3_ENDPOINT_URL"))
    if settings.flower_user:
        rows.append(
            (
                "Flower user",
                settings.flower_user + " (password set)" * bool(settings.flower_password),
                "DIFFQ_FLOWER_USER",
            )
        )
    for label, value, variable in rows:
        source = "set" if variable in os.environ else "default"
        typer.echo(f"{label + ':':<13}{value}   [{variable}, {source}]")


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
    priority: Priority = None,
    webhook: Webhook = None,
    api_url: ApiUrl = None,
) -> None:
    """Submit a batch from a JSON Lines file and print its id.

    A line like {"prompt": "a cat", "seed": 1} is the params of one job of --type on --model; a line
    with a "params" key is a whole job spec, whose type and model default to --type and --model.
    With --watch or --download, exit 1 unless every job succeeded.
    """
    from cli.client import Client
    from cli.download import download_batch
    from cli.progress import watch_batch

    client = Client(api_url or get_settings().public_url)
    submitted = client.submit_batch_jsonl(
        file,
        type=type,
        model=model,
        name=name,
        priority=None if priority is None else str(priority),
        webhook=None if webhook is None else json.dumps({"url": webhook}),
    )
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
    from cli.client import ApiError, Client, CliError, check_id

    client = Client(api_url or get_settings().public_url)
    failed = False
    for item in ids:
        try:
            item = check_id(item, "batch" if batch else "job")
            result = client.cancel_batch(item) if batch else client.cancel(item)
        except CliError as error:
            not_a_job = not batch and isinstance(error, ApiError) and error.status_code == 404
            if not_a_job and _is_batch(client, item):
                error = CliError(f"{item} is a batch id; cancel the batch with `diffq cancel --batch {item}`")
            typer.echo(f"{item}: {error}", err=True)
            failed = True
            continue
        typer.echo(f"{item} {result['status']}")
    if failed:
        raise typer.Exit(1)


def _is_batch(client: "Client", item_id: str) -> bool:
    """Whether `item_id` names a batch the caller may see."""
    from cli.client import ApiError

    try:
        client.batch(item_id)
    except ApiError:
        return False
    return True


@app.command()
def upload(file: Path, api_url: ApiUrl = None) -> None:
    """Upload an input image; print the reference a job's params take (e.g. --param image=...)."""
    from cli.client import Client

    uploaded = Client(api_url or get_settings().public_url).upload(file)
    typer.echo(json.dumps(uploaded.get("image") or {"dataset": uploaded["id"]}))


@app.command()
def quickstart(
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of 16 steps each.")] = QUICKSTART_EPOCHS,
    num_images: Annotated[int, typer.Option(min=1, max=16, help="Images to generate.")] = 16,
    inference_steps: Annotated[
        int, typer.Option(min=1, max=1000, help="Denoising steps per generated image.")
    ] = QUICKSTART_STEPS,
    scheduler: Annotated[
        str, typer.Option(help="The scheduler that generates the grid.")
    ] = QUICKSTART_SCHEDULER,
    name: Annotated[str, typer.Option(help="The name the trained model is registered under.")] = (
        "quickstart-glyphs"
    ),
) -> None:
    """Run diffq end to end on embedded defaults: train a small model on the built-in glyphs dataset
    through a job, then generate a grid of images with it."""
    from cli.quickstart import run_quickstart

    status = run_quickstart(
        epochs=epochs, num_images=num_images, inference_steps=inference_steps, scheduler=scheduler, name=name
    )
    raise typer.Exit(status)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError

    from cli.client import CliError
    from migrations.run import DatabaseUnavailable

    try:
        app()
    except (CliError, DatabaseUnavailable) as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
    except ValidationError as error:
        if error.title != "Settings":
            raise
        typer.echo(f"error: {settings_problem(error)}", err=True)
        raise SystemExit(1) from None
    except (
        ArgumentError
    ) as error:  # NoSuchModuleError too: a URL SQLAlchemy can't parse or has no dialect for
        url = _masked(get_settings().database_url)
        reason = str(error).strip().splitlines()[0]
        typer.echo(
            f"error: DIFFQ_DATABASE_URL={url} is not a database URL diffq can use ({reason}); give one "
            "such as postgresql+psycopg://user:password@host:5432/diffq or sqlite:///path/to/diffq.db",
            err=True,
        )
        raise SystemExit(1) from None
    except (OperationalError, ProgrammingError) as error:
        settings = get_settings()
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        typer.echo(f"error: the database at {_masked(settings.database_url)} failed: {reason}", err=True)
        typer.echo("  `diffq db upgrade` creates it; `diffq config` shows the settings in use", err=True)
        raise SystemExit(1) from None


def settings_problem(error: ValidationError) -> str:
    """The settings' validation `error` as one line naming each variable: `DIFFQ_MAX_PIXELS='abc': ...`."""
    problems = []
    for detail in error.errors():
        variable = "DIFFQ_" + "_".join(str(part) for part in detail["loc"]).upper()
        value = detail.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        problems.append(f"{variable}{shown}: {detail['msg']}")
    return "bad setting " + "; ".join(problems)


def _require_schema() -> None:
    """Stop with one line when the database isn't ready for a server to start on it."""
    from cli.client import CliError
    from migrations.run import schema_problem

    if problem := schema_problem():
        raise CliError(problem)


def _masked(url: str) -> str:
    from core.db import masked_url

    return masked_url(url)
