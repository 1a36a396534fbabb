"""The offline quickstart: everything on embedded defaults, nothing to install or start first."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import typer

from cli.client import Client
from cli.progress import watch_jobs
from core.config import get_settings
from core.storage import LocalStorage, get_storage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(port: int) -> threading.Thread:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config("api.main:app", host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    return thread


def run_quickstart(prompt: str, num_images: int) -> int:
    from migrations.run import upgrade
    from models_store.tiny import make_tiny_models

    settings = get_settings()
    typer.echo(f"diffq home: {settings.home}")
    typer.echo("1/4 making tiny models ...")
    make_tiny_models(settings.models_dir)
    typer.echo("2/4 creating the database ...")
    upgrade()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    typer.echo(f"3/4 starting the API at {url} and one worker ...")
    start_api(port)
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--loglevel", "WARNING"],
        env=os.environ | {"DIFFQ_PUBLIC_URL": url},
    )
    try:
        client = Client(url)
        jobs = [
            client.submit(
                {
                    "type": "text2img",
                    "model": "tiny-sd",
                    "params": {
                        "prompt": prompt,
                        "num_inference_steps": 20,
                        "width": 64,
                        "height": 64,
                        "seed": 1234,
                        "num_images": num_images,
                    },
                }
            ),
            client.submit(
                {
                    "type": "unconditional",
                    "model": "tiny-ddpm",
                    "params": {"num_inference_steps": 50, "seed": 0, "num_images": num_images},
                }
            ),
        ]
        typer.echo("4/4 running jobs ...")
        finished = watch_jobs(client, [job["id"] for job in jobs])
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

    storage = get_storage()
    failed = 0
    for job in finished:
        typer.echo(f"job {job['id']} ({job['type']}, {job['model']}) {job['status']} on {job['worker']}")
        if job["status"] != "succeeded":
            failed += 1
            typer.echo(f"  error: {job['error']}")
        for output in job["outputs"]:
            where = storage.path(output["key"]) if isinstance(storage, LocalStorage) else output["url"]
            typer.echo(f"  {where}")
    return 1 if failed else 0
