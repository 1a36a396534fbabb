"""A worker's start says nothing a user can't act on: transformers' warning that torchvision is missing
(diffq needs none; the image processors fall back to PIL) is filtered once `models_store` is imported."""

import subprocess
import sys
from pathlib import Path

import pytest

# Two fresh interpreters importing transformers: some seconds, so not in the fast tier.
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_no_torchvision_warning_when_loading_image_processors() -> None:
    code = "import models_store; from transformers import CLIPImageProcessor; CLIPImageProcessor()"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert "torchvision" not in result.stderr, result.stderr
    # Without the import, transformers does warn: the filter, not a quiet library, makes the difference.
    bare = subprocess.run(
        [sys.executable, "-c", code.removeprefix("import models_store; ")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "requires torchvision" in bare.stderr
