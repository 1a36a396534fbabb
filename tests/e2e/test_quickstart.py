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


def test_quickstart_trains_then_generates(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFQ_", "AWS_"))}
    result = subprocess.run(
        # A short run of the real demo: 2 epochs instead of 90, 10 denoising steps instead of 1000.
        [
            sys.executable,
            "-m",
            "cli",
            "quickstart",
            "--epochs",
            "2",
            "--num-images",
            "4",
            "--inference-steps",
            "10",
        ],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    home = tmp_path / ".diffq"
    out = result.stdout
    assert re.search(r"\(train_unconditional\) succeeded on diffq@", out), out
    assert re.search(r"\(unconditional\) succeeded on diffq@", out), out

    grids = re.findall(r"^  sample_grid \(epoch \d+\): (/\S+\.png)$", out, flags=re.MULTILINE)
    assert len(grids) == 2, out  # after epochs 1 and 2
    images = [Path(p) for p in re.findall(r"^  image: (/\S+\.png)$", out, flags=re.MULTILINE)]
    assert len(images) == 4, out
    for path in images:
        assert path.is_relative_to(home / "outputs")
        assert read_png_parameters(path.read_bytes())["model"] == "quickstart-glyphs"
        with Image.open(path) as image:
            assert image.size == (16, 16)

    [grid] = re.findall(r"^the grid of generated glyphs .*: (/\S+\.png)$", out, flags=re.MULTILINE)
    with Image.open(grid) as image:
        assert image.size == (2 * 16 * 8, 2 * 16 * 8)  # 2 × 2 images of 16 px, shown 8× larger

    with sqlite3.connect(home / "diffq.db") as db:
        [(kind, job_id)] = db.execute(
            "SELECT kind, job_id FROM models WHERE name = 'quickstart-glyphs'"
        ).fetchall()
    assert kind == "unconditional" and job_id
