import gc
import threading
import time
import weakref

import pytest

from models_store.cache import PipelineCache


class Model:
    """Stands in for a pipeline; holds a reference cycle, so only a garbage collection frees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.itself = self


def test_hits_misses_and_lru_eviction_order() -> None:
    cache = PipelineCache(max_items=2)
    loads: list[str] = []

    def loader(name: str):  # type: ignore[no-untyped-def]
        def load() -> Model:
            loads.append(name)
            return Model(name)

        return load

    a = cache.get_or_load("a", loader("a"))
    assert cache.get_or_load("a", loader("a")) is a
    cache.get_or_load("b", loader("b"))
    assert cache.resident() == ["a", "b"]
    cache.get_or_load("a", loader("a"))  # a is now the most recently used
    assert cache.resident() == ["b", "a"]
    cache.get_or_load("c", loader("c"))  # evicts b, the least recently used
    assert cache.resident() == ["a", "c"]
    cache.get_or_load("b", loader("b"))  # evicts a
    assert cache.resident() == ["c", "b"]
    assert loads == ["a", "b", "c", "b"]
    assert (cache.hits, cache.misses) == (2, 4)


def test_eviction_frees_the_evicted_object() -> None:
    gc.disable()  # so that only the cache's own collection can free the cycle
    try:
        cache = PipelineCache(max_items=1)
        first = weakref.ref(cache.get_or_load("a", lambda: Model("a")))
        assert first() is not None
        cache.get_or_load("b", lambda: Model("b"))
        assert first() is None
        second = weakref.ref(cache.get_or_load("b", lambda: Model("b")))
        cache.clear()
        assert second() is None and cache.resident() == []
    finally:
        gc.enable()


def test_evicts_before_loading_so_old_and_new_never_coexist() -> None:
    cache = PipelineCache(max_items=1)
    first = weakref.ref(cache.get_or_load("a", lambda: Model("a")))
    seen_during_load: list[bool] = []

    def load_b() -> Model:
        seen_during_load.append(first() is None)
        return Model("b")

    cache.get_or_load("b", load_b)
    assert seen_during_load == [True]


def test_failed_load_is_not_cached() -> None:
    cache = PipelineCache(max_items=2)

    def broken() -> Model:
        raise OSError("no such file")

    with pytest.raises(OSError, match="no such file"):
        cache.get_or_load("a", broken)
    assert cache.resident() == [] and cache.misses == 1
    assert cache.get_or_load("a", lambda: Model("a")).name == "a"
    assert cache.misses == 2


def test_load_seconds_add_up() -> None:
    cache = PipelineCache(max_items=2)

    def slow() -> Model:
        time.sleep(0.05)
        return Model("slow")

    cache.get_or_load("a", slow)
    cache.get_or_load("b", slow)
    cache.get_or_load("a", slow)  # a hit costs no load time
    assert 0.1 <= cache.load_seconds < 1.0


def test_concurrent_requests_load_once() -> None:
    cache = PipelineCache(max_items=2)
    calls: list[int] = []

    def slow() -> Model:
        calls.append(1)
        time.sleep(0.05)
        return Model("a")

    results: list[Model] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_load("a", slow))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert (cache.hits, cache.misses) == (7, 1)


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PipelineCache(max_items=0)
