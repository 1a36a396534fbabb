"""The offline quickstart on embedded defaults: SQLite, a local folder, a filesystem broker, and
still a real Celery worker process that trains a model and then generates with it."""

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from PIL import Image

from core.images import read_png_parameters
from tests.utils.services import ROOT


def quickstart(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFQ_", "AWS_", "PYTHONWARNINGS"))}
    return subprocess.run(
        [sys.executable, "-m", "cli", "quickstart", *args],
        cwd=cwd,
        env=env | {"PYTHONPATH": str(ROOT), "DIFFQ_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quickstart_trains_then_generates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A short run of the real demo: 2 epochs instead of the default's, and 4 images.
    result = quickstart(home, tmp_path, "--epochs", "2", "--num-images", "4", "--inference-steps", "10")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"\(train_unconditional\) succeeded on diffq@", out), out
    assert re.search(r"\(unconditional\) succeeded on diffq@", out), out
    assert "10 ddpm steps" in out
    # Warnings a user can't act on stay out of the quickstart's output (the worker's log has them).
    for noise in ("SecurityWarning", "superuser", "torchvision", "Traceback", "celery@", "[queues]"):
        assert noise not in out + result.stderr, noise
    assert (home / "quickstart-worker.log").exists()

    grids = re.findall(r"^  sample_grid \(epoch \d+\): (/\S+\.png)$", out, flags=re.MULTILINE)
    assert len(grids) == 2, out  # after epochs 1 and 2
    images = [Path(p) for p in re.findall(r"^  image: (/\S+\.png)$", out, flags=re.MULTILINE)]
    assert len(images) == 4, out
    for path in images:
        assert path.is_relative_to(home / "outputs")
        parameters = read_png_parameters(path.read_bytes())
        assert parameters["model"] == "quickstart-glyphs"
        assert parameters["params"]["scheduler"] == "ddpm"
        with Image.open(path) as image:
            assert image.size == (16, 16)

    [grid] = re.findall(r"^the grid of generated glyphs .*: (/\S+\.png)$", out, flags=re.MULTILINE)
    assert grid == str(home / "quickstart-grid.png")
    with Image.open(grid) as image:
        assert image.size == (2 * 16 * 8, 2 * 16 * 8)  # 2 × 2 images of 16 px, shown 8× larger
    first_grid = Path(grid).read_bytes()

    with sqlite3.connect(home / "diffq.db") as db:
        [(kind, first_job)] = db.execute(
            "SELECT kind, job_id FROM models WHERE name = 'quickstart-glyphs'"
        ).fetchall()
    assert kind == "unconditional" and first_job

    # A rerun says that it replaces the model, and keeps the earlier grid.
    again = quickstart(home, tmp_path, "--epochs", "1", "--num-images", "1", "--inference-steps", "2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "replaces the model 'quickstart-glyphs' of an earlier run" in again.stdout, again.stdout
    second = f"the grid of generated glyphs (1×1, shown 8× larger): {home / 'quickstart-grid-2.png'}"
    assert second in again.stdout, again.stdout
    assert Path(grid).read_bytes() == first_grid
