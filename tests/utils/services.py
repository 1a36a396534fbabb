"""Starting and stopping the real processes the tests talk to."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class WorkerProcess:
    """A real `diffq worker` process; `extra_code` runs first (for fault injection in tests)."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str],
        name: str,
        queues: str | None = None,
        preload: str | None = None,
    ) -> None:
        self.log_path = log_path
        args = [sys.executable]
        if preload:
            args += ["-c", f"import {preload}; from cli.main import main; main()"]
        else:
            args += ["-m", "cli"]
        args += ["worker", "--loglevel", "INFO", "--name", name]
        if queues:
            args += ["--queues", queues]
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=os.environ | env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            return " ready." in self.log_path.read_text()

        wait_for(ready, timeout, "the worker to be ready", interval=0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.log.close()


def wait_http(url: str, timeout: float = 30) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_for(up, timeout, url)


def use_new_api_key(owner: str, **limits: int | str) -> str:
    """Make an API key for `owner` in the configured database and put it in DIFFQ_API_KEY, where
    `cli.client.Client` finds it; returns the key. For benchmarks and scripts outside pytest."""
    from core.auth import create_key
    from core.db import db_session

    with db_session() as session:
        key = create_key(session, owner, limits=dict(limits))[1]
    os.environ["DIFFQ_API_KEY"] = key
    return key
