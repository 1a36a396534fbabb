"""The offline quickstart on embedded defaults: SQLite, a local folder, a filesystem broker,
and still a real Celery worker process consuming the jobs."""

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from core.images import read_png_parameters
from tests.utils.services import ROOT


def test_quickstart_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFQ_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "quickstart", "--num-images", "2"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    home = tmp_path / ".diffq"
    assert (home / "diffq.db").is_file()
    assert result.stdout.count("succeeded on diffq@") == 2, "a Celery worker should have run both jobs"
    paths = [Path(p) for p in re.findall(r"^  (/\S+\.png)$", result.stdout, flags=re.MULTILINE)]
    assert len(paths) == 4, result.stdout
    for path in paths:
        assert path.is_relative_to(home / "outputs")
        with Image.open(path) as image:
            assert image.size in {(64, 64), (32, 32)}
        assert read_png_parameters(path.read_bytes())["model"] in {"tiny-sd", "tiny-ddpm"}
