import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from models_store.tiny import make_tiny_models


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: the tiny models gain nothing from more, and on a machine busy with other
    processes torch's spinning worker threads make each step ten to thirty times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package", autouse=True)
def _frozen_heap() -> Iterator[None]:
    """Leave what the session held before these tests out of garbage collections. The pipeline cache
    collects at every eviction (models_store/cache.py `release_memory`), and a full collection walks every
    object of torch, diffusers and the collected test modules: about half a second each time. What the
    tests make after the freeze (cycles, evicted pipelines) is collected as before."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the tiny models, built once per test session (a few seconds)."""
    models_dir = tmp_path_factory.mktemp("models")
    make_tiny_models(models_dir)
    return models_dir
