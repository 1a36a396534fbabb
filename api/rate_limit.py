"""Per-key request rate limits with the `limits` library (sliding-window counters).

The counters live in Redis when the broker is Redis, so that every API process counts together; on the
embedded defaults (no Redis) they live in this process's memory. The limit is `DIFFQ_RATE_LIMIT` in the
library's notation ("50/second;1000/minute"), or a key's own `limits["rate_limit"]`.
"""

import math
import time
from functools import lru_cache

from fastapi import HTTPException, status
from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from core.auth import Principal
from core.config import get_settings


@lru_cache
def _limiter() -> SlidingWindowCounterRateLimiter:
    broker = get_settings().broker_url
    storage: Storage = storage_from_string(
        broker if broker.startswith(("redis://", "rediss://")) else "memory://"
    )
    return SlidingWindowCounterRateLimiter(storage)


@lru_cache(maxsize=256)
def _items(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit))


def hit_rate_limit(principal: Principal) -> None:
    """Count one request for the principal's key; a 429 with `Retry-After` when it is over its limit."""
    limit = str(principal.limits.get("rate_limit") or get_settings().rate_limit)
    if not limit or principal.key_id is None:
        return
    limiter = _limiter()
    key = str(principal.key_id)
    for item in _items(limit):
        if not limiter.hit(item, "diffq-key", key):
            reset = limiter.get_window_stats(item, "diffq-key", key).reset_time
            retry_after = max(1, math.ceil(reset - time.time()))
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"too many requests: this API key may send {item} (rate limit "
                f"{'of the key' if principal.limits.get('rate_limit') else 'DIFFQ_RATE_LIMIT'}); "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
