"""`diffq worker --gpus`: one worker process per CUDA device, under a supervisor.

The supervisor never touches CUDA itself. It lists the devices (`nvidia-smi`, or torch in a throwaway
subprocess when there is no `nvidia-smi`), then starts one `diffq worker` per device with
`CUDA_VISIBLE_DEVICES=<id>` already in its environment, so the child's CUDA only ever sees its own card
(as `cuda:0`). Each child is named after its device (`gpu2@host`) and labels its jobs with it
(`cuda:2 (NVIDIA H100 80GB HBM3)`). With no GPU at all, `--gpus all` starts one CPU worker (`cpu@host`).

Supervision: SIGTERM and SIGINT are forwarded to every child, which finishes its running job (Celery's
warm shutdown) and exits; the supervisor exits when they all have. A child that exits on its own with a
non-zero status (a crash, a kill) is restarted under the same name, so that it drains its own direct
queue, after a back-off that doubles from 1 s to 60 s while it keeps dying within a minute of its start.
After `max_quick_failures` such quick deaths in a row the supervisor stops the other children and exits
with status 1, rather than crash-looping on a broken configuration. A child that exits with status 0 was
told to stop (e.g. `celery control shutdown`) and is not restarted.
"""

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger("diffq.supervisor")

QUICK_EXIT_S = 60.0
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Gpu:
    id: str  # as CUDA_VISIBLE_DEVICES names it: an index ("2") or a UUID ("GPU-…")
    name: str | None = None


@dataclass(frozen=True)
class ChildSpec:
    name: str  # the Celery node name, e.g. gpu2@%h
    argv: list[str]
    env: dict[str, str]


def parse_gpus(value: str) -> list[str] | None:
    """`--gpus`: "all" is None (every visible device), else a list of device ids like ["0", "2"]."""
    value = value.strip()
    if value.lower() == "all":
        return None
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise ValueError(f"--gpus takes 'all' or comma-separated device ids like '0,2', got {value!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus lists a device twice: {value!r}")
    return ids


def detect_gpus(env: dict[str, str] | None = None) -> list[Gpu]:
    """The CUDA devices this process may use: those of `CUDA_VISIBLE_DEVICES` when it is set, else all."""
    env = dict(os.environ if env is None else env)
    listed = _nvidia_smi_gpus()  # (index, uuid, name) of every device, whatever CUDA_VISIBLE_DEVICES says
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = {index: name for index, _uuid, name in listed} | {uuid: name for _i, uuid, name in listed}
        ids: list[str] = []
        for part in visible.split(","):
            if not part.strip() or part.strip().startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on ("-1" hides all devices)
            ids.append(part.strip())
        return [Gpu(gpu_id, names.get(gpu_id)) for gpu_id in ids]
    if shutil.which("nvidia-smi"):
        return [Gpu(index, name) for index, _uuid, name in listed]
    return [Gpu(str(index)) for index in range(_torch_device_count())]


def _nvidia_smi_gpus() -> list[tuple[str, str, str]]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[cell.strip() for cell in line.split(",", 2)] for line in result.stdout.splitlines()]
    return [(row[0], row[1], row[2]) for row in rows if len(row) == 3]


def _torch_device_count() -> int:
    """Ask torch in a child process, so that this one never initialises CUDA."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return int(result.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def plan_workers(
    requested: list[str] | None,
    available: Sequence[Gpu],
    worker_args: Sequence[str],
    base_env: dict[str, str],
) -> list[ChildSpec]:
    """One child per requested device (all of `available` when `requested` is None), or one CPU child.

    `worker_args` are passed to each child's `diffq worker` (serve, log level, queues).
    """
    by_id = {gpu.id: gpu for gpu in available}
    if requested is None:
        gpus = list(available)
    else:
        if not available:
            raise ValueError(
                f"--gpus {','.join(requested)} asks for CUDA devices, but none is visible; "
                "use --gpus all to run one CPU worker instead"
            )
        missing = [gpu_id for gpu_id in requested if gpu_id not in by_id]
        if missing:
            known = ", ".join(gpu.id for gpu in available)
            raise ValueError(f"no CUDA device {', '.join(missing)}; the visible ones are {known}")
        gpus = [by_id[gpu_id] for gpu_id in requested]

    command = [sys.executable, "-m", "cli", "worker", *worker_args]
    if not gpus:
        env = base_env | {"DIFFQ_DEVICE": "cpu", "DIFFQ_DEVICE_LABEL": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        return [ChildSpec("cpu@%h", [*command, "--name", "cpu@%h"], env)]
    specs = []
    for position, gpu in enumerate(gpus):
        number = gpu.id if gpu.id.isdigit() else str(position)
        label = f"cuda:{number} ({gpu.name})" if gpu.name else f"cuda:{number}"
        env = base_env | {
            "CUDA_VISIBLE_DEVICES": gpu.id,
            "DIFFQ_DEVICE": "cuda:0",
            "DIFFQ_DEVICE_LABEL": label,
        }
        name = f"gpu{number}@%h"
        specs.append(ChildSpec(name, [*command, "--name", name], env))
    return specs


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None
    done: bool = False


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, so no worker outlives it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Supervisor:
    specs: list[ChildSpec]
    max_quick_failures: int = 5
    poll_s: float = 0.5
    children: list[_Child] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> int:
        """Start the children and look after them until they have all exited; the exit status."""
        self.children = [_Child(spec) for spec in self.specs]
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for child in self.children:
                self._start(child)
            return self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen(
            child.spec.argv,
            env=child.spec.env,
            # Its own session: a Ctrl-C reaches the supervisor only, which forwards it once.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child.started = time.monotonic()
        child.restart_at = None
        logger.info("started worker %s (pid %s)", child.spec.name, child.process.pid)

    def _forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signum)

    def _watch(self) -> int:
        status = 0
        while True:
            now = time.monotonic()
            for child in self.children:
                if child.done:
                    continue
                if child.restart_at is not None:
                    if self.stopping:
                        child.done = True
                    elif now >= child.restart_at:
                        self._start(child)
                    continue
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                if self.stopping or code == 0:
                    logger.info("worker %s exited with status %s", child.spec.name, code)
                    child.done = True
                    continue
                if now - child.started >= QUICK_EXIT_S:
                    child.quick_failures = 0
                child.quick_failures += 1
                if child.quick_failures > self.max_quick_failures:
                    logger.error(
                        "worker %s died %s times within %ss of starting; stopping the others",
                        child.spec.name,
                        child.quick_failures,
                        QUICK_EXIT_S,
                    )
                    child.done = True
                    status = 1
                    self._forward(signal.SIGTERM, None)
                    continue
                delay = min(MAX_BACKOFF_S, 2.0 ** (child.quick_failures - 1))
                logger.warning(
                    "worker %s exited with status %s; restarting it in %.0fs", child.spec.name, code, delay
                )
                child.restart_at = now + delay
            if all(child.done for child in self.children):
                return status
            time.sleep(self.poll_s)
