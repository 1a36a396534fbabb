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

    def loader(name: str):
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


class Sized(Model):
    def __init__(self, name: str, nbytes: int) -> None:
        super().__init__(name)
        self.nbytes = nbytes


def sized_cache(budget_bytes: int, max_items: int | None = None) -> PipelineCache:
    return PipelineCache(max_items=max_items, budget_bytes=budget_bytes, size_of=lambda value: value.nbytes)


def test_budget_evicts_least_recently_used_until_the_new_one_fits() -> None:
    cache = sized_cache(budget_bytes=100)
    cache.get_or_load("a", lambda: Sized("a", 40), estimate_bytes=40)
    cache.get_or_load("b", lambda: Sized("b", 40), estimate_bytes=40)
    cache.get_or_load("a", lambda: Sized("a", 40))  # a is now the most recently used
    cache.get_or_load("c", lambda: Sized("c", 50), estimate_bytes=50)  # 130 > 100: b goes
    assert cache.resident() == ["a", "c"]
    cache.get_or_load("d", lambda: Sized("d", 90), estimate_bytes=90)  # both others go
    stats = cache.stats()
    assert stats.resident == [("d", 90)] and stats.resident_bytes == 90 and stats.budget_bytes == 100
    assert (stats.hits, stats.misses, stats.evictions) == (1, 4, 3)


def test_budget_evicts_before_loading_when_the_estimate_does_not_fit() -> None:
    cache = sized_cache(budget_bytes=100)
    first = weakref.ref(cache.get_or_load("a", lambda: Sized("a", 60)))
    seen_during_load: list[bool] = []

    def load_b() -> Sized:
        seen_during_load.append(first() is None)
        return Sized("b", 60)

    cache.get_or_load("b", load_b, estimate_bytes=60)
    assert seen_during_load == [True]


def test_budget_evicts_after_loading_when_the_estimate_was_low() -> None:
    cache = sized_cache(budget_bytes=100)
    cache.get_or_load("a", lambda: Sized("a", 60))
    cache.get_or_load("b", lambda: Sized("b", 60), estimate_bytes=10)  # it turned out bigger
    assert cache.resident() == ["b"]
    assert cache.stats().evictions == 1


def test_an_object_over_the_whole_budget_is_kept_alone(caplog: pytest.LogCaptureFixture) -> None:
    cache = sized_cache(budget_bytes=100)
    cache.get_or_load("a", lambda: Sized("a", 30))
    big = cache.get_or_load("big", lambda: Sized("big", 500), estimate_bytes=500, tag="big-model")
    assert cache.resident() == ["big"] and big.name == "big"
    assert "more than the whole cache budget" in caplog.text
    assert cache.get_or_load("big", lambda: Sized("big", 500)) is big  # and it stays cached


def test_tags_name_the_entries_in_stats() -> None:
    cache = sized_cache(budget_bytes=100)
    cache.get_or_load(("/models/tiny-sd", "text2img"), lambda: Sized("a", 10), tag="tiny-sd")
    cache.get_or_load("untagged", lambda: Sized("b", 20))
    assert cache.stats().resident == [("tiny-sd", 10), ("untagged", 20)]


def test_item_cap_and_budget_apply_together() -> None:
    cache = sized_cache(budget_bytes=1000, max_items=2)
    for name in "abc":
        cache.get_or_load(name, lambda name=name: Sized(name, 1))
    assert cache.resident() == ["b", "c"]


def test_clear_counts_evictions_and_empties_stats() -> None:
    cache = sized_cache(budget_bytes=100)
    cache.get_or_load("a", lambda: Sized("a", 10))
    cache.get_or_load("b", lambda: Sized("b", 10))
    cache.clear()
    stats = cache.stats()
    assert stats.resident == [] and stats.resident_bytes == 0 and stats.evictions == 2


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget_bytes must be at least 1"):
        PipelineCache(budget_bytes=0)
