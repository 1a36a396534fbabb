"""An LRU of loaded pipelines that fits a memory budget, so that a worker running jobs for the same model
loads it once and never holds more weights than its device can spare.

Each entry is sized in bytes (its modules' parameters and buffers). Before a load, least recently used
entries are evicted until the new pipeline's estimated size fits the budget; after it, until its measured
size does. An evicted pipeline is released at once: its reference dropped, a garbage collection run, and the
CUDA allocator's cached blocks handed back, so the next load finds the memory free.
"""

import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from models_store.memory import pipeline_bytes

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    value: Any
    nbytes: int
    tag: str


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    load_seconds: float
    budget_bytes: int | None
    resident_bytes: int
    # (tag, bytes) of each loaded pipeline, least recently used first.
    resident: list[tuple[str, int]]


class PipelineCache:
    """Least-recently-used cache of loaded objects within `budget_bytes` and at most `max_items` entries
    (either may be None: no limit), safe to share between threads.

    Loads run under the cache's lock, one at a time: two threads asking for the same model must not both
    load it, and two loads at once could need twice the memory. A single object larger than the budget is
    still loaded, alone, with a warning: the budget is a share of the device, not all of it.
    """

    def __init__(
        self,
        max_items: int | None = None,
        budget_bytes: int | None = None,
        size_of: Callable[[Any], int] = pipeline_bytes,
    ) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        if budget_bytes is not None and budget_bytes < 1:
            raise ValueError(f"budget_bytes must be at least 1, got {budget_bytes}")
        self.max_items = max_items
        self.budget_bytes = budget_bytes
        self.size_of = size_of
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.load_seconds = 0.0
        self._items: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(
        self,
        key: Hashable,
        loader: Callable[[], T],
        *,
        estimate_bytes: int | Callable[[], int] | None = None,
        tag: str | None = None,
    ) -> T:
        """Return the object cached under `key`, calling `loader` to make it on a miss.

        `estimate_bytes` is the new object's expected size (or a function that works it out, called only
        on a miss), used to evict before loading so that old and new weights are not in memory together
        beyond the budget. `tag` names the entry in `stats()` (the
        model reference, say); it defaults to `str(key)`. If `loader` raises, nothing is cached and the
        error propagates.
        """
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return entry.value
            self.misses += 1
            if callable(estimate_bytes):
                estimate_bytes = estimate_bytes()
            self._evict_until_fits(estimate_bytes or 0, keep=None)
            start = time.perf_counter()
            try:
                value = loader()
            finally:
                self.load_seconds += time.perf_counter() - start
            nbytes = self.size_of(value)
            self._items[key] = _Entry(value, nbytes, tag if tag is not None else str(key))
            self._evict_until_fits(0, keep=key)
            if self.budget_bytes is not None and nbytes > self.budget_bytes:
                logger.warning(
                    "%s takes %.1f MiB, more than the whole cache budget of %.1f MiB; it is kept alone",
                    self._items[key].tag,
                    nbytes / 2**20,
                    self.budget_bytes / 2**20,
                )
            return value

    def _evict_until_fits(self, incoming_bytes: int, keep: Hashable | None) -> None:
        """Evict least recently used entries (never `keep`) until `incoming_bytes` more would fit."""
        evicted = False
        for key in list(self._items):
            if not self._over_limits(incoming_bytes, incoming_items=0 if keep is not None else 1):
                break
            if key == keep:
                continue
            entry = self._items.pop(key)
            logger.info("evicting %s (%.1f MiB) from the pipeline cache", entry.tag, entry.nbytes / 2**20)
            del entry
            self.evictions += 1
            evicted = True
        if evicted:
            release_memory()

    def _over_limits(self, incoming_bytes: int, incoming_items: int) -> bool:
        if self.max_items is not None and len(self._items) + incoming_items > self.max_items:
            return True
        if self.budget_bytes is None:
            return False
        return self._resident_bytes() + incoming_bytes > self.budget_bytes

    def _resident_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._items.values())

    def resident(self) -> list[Hashable]:
        """Keys of the cached objects, least recently used first."""
        with self._lock:
            return list(self._items)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
                load_seconds=self.load_seconds,
                budget_bytes=self.budget_bytes,
                resident_bytes=self._resident_bytes(),
                resident=[(entry.tag, entry.nbytes) for entry in self._items.values()],
            )

    def clear(self) -> None:
        """Drop every cached object and release the memory it held."""
        with self._lock:
            self.evictions += len(self._items)
            self._items.clear()
            release_memory()


def release_memory() -> None:
    """Collect dropped pipelines now, not at some later collection, and return CUDA's cached blocks.

    torch is only consulted if something already imported it: otherwise no tensor can be held.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
