from pathlib import Path

import pytest

from models_store.tiny import make_tiny_models


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the tiny models, built once per test session (a few seconds)."""
    models_dir = tmp_path_factory.mktemp("models")
    make_tiny_models(models_dir)
    return models_dir
