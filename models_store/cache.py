"""A small LRU of loaded pipelines, so that a worker running jobs for the same model loads it once.

A pipeline holds gigabytes of weights, so the cache is sized in items (`DIFFQ_PIPELINE_CACHE_SIZE`) and an
evicted pipeline is released at once: its reference dropped, a garbage collection run, and the CUDA
allocator's cached blocks handed back, so the next load finds the memory free.
"""

import gc
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class PipelineCache:
    """Least-recently-used cache of at most `max_items` loaded objects, safe to share between threads.

    Loads run under the cache's lock, one at a time: two threads asking for the same model must not both
    load it, and two loads at once could need twice the memory.
    """

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self.load_seconds = 0.0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, loader: Callable[[], T]) -> T:
        """Return the object cached under `key`, calling `loader` to make it on a miss.

        On a miss the least recently used items are evicted *before* loading, so that the old and the new
        pipeline are never in memory together beyond `max_items`. If `loader` raises, nothing is cached
        and the error propagates.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            if len(self._items) >= self.max_items:
                self._items.popitem(last=False)
                _release_memory()
            start = time.perf_counter()
            try:
                value = loader()
            finally:
                self.load_seconds += time.perf_counter() - start
            self._items[key] = value
            return value

    def resident(self) -> list[Hashable]:
        """Keys of the cached objects, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Drop every cached object and release the memory it held."""
        with self._lock:
            self._items.clear()
            _release_memory()


def _release_memory() -> None:
    """Collect dropped pipelines now, not at some later collection, and return CUDA's cached blocks.

    torch is only consulted if something already imported it: otherwise no tensor can be held.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
