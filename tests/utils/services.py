"""Starting and stopping the real processes the tests talk to."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
        root: Path = ROOT,
    ) -> None:
        """`root`: the checkout whose code the worker runs (a benchmark's baseline runs another's)."""
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
            cwd=root,
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


def start_redis(log_path: Path) -> tuple[str, subprocess.Popen]:
    """A redis-server of a test's own on a spare port, without persistence; its URL and process."""
    import redis

    from cli.quickstart import free_port

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 30, "the private redis-server")
    return f"redis://127.0.0.1:{port}/0", server


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


class PrivatePostgres:
    """A Postgres server of a test's own, on a spare port, in a temporary folder of its own: the test may
    stop and start it at will. Made with the machine's `initdb`/`pg_ctl` (the newest under
    /usr/lib/postgresql), run as the `postgres` user when the tests run as root (initdb refuses root; the
    folder is outside pytest's, which only root may enter)."""

    def __init__(self) -> None:
        from cli.quickstart import free_port

        [self.bin, *_] = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        root = Path(tempfile.mkdtemp(prefix="diffq-test-postgres-"))
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        root.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            subprocess.run(["chown", "postgres", str(root)], check=True)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / program), *args], check=True, capture_output=True, timeout=120
        )

    @property
    def server_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        """Stop at once, dropping every connection (`-m fast`), as a crash or a failover would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop if running, and delete its folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def fresh_database(name: str) -> None:
    """Drop and create the Postgres database `name` on the machine's server (127.0.0.1:5432, user postgres)
    and migrate it; `DIFFQ_DATABASE_URL` must name it. For benchmarks, which start from nothing each run."""
    import psycopg

    from migrations.run import upgrade

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade()


@contextlib.contextmanager
def running_flower(tmp: Path, auth: tuple[str, str], worker: str | None = None) -> Iterator[str]:
    """`diffq flower` on the tests' broker behind basic auth `auth`, logging to `tmp`, once it answers
    (and, given `worker`, once it has heard that worker's events); its URL. Stopped afterwards."""
    from cli.quickstart import free_port

    port = free_port()
    log_path = tmp / f"flower-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "flower", "--port", str(port)],
        cwd=ROOT,
        env=os.environ | {"DIFFQ_FLOWER_USER": auth[0], "DIFFQ_FLOWER_PASSWORD": auth[1]},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            if worker is None:
                return httpx.get(url, timeout=2).status_code == 401
            workers = httpx.get(f"{url}/workers", params={"json": 1}, auth=auth, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(found.get("hostname") == worker for found in workers["data"])

    try:
        wait_for(ready, 60, f"Flower to answer{f' and hear {worker}' if worker else ''}", interval=0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
