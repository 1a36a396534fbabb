"""Which jobs can run together as one pipeline call: those with the same fusion key.

A text2img call takes a prompt, a negative prompt and a generator per image, so jobs that differ only in
their prompts and seeds can share one call, if everything else that shapes the call is the same: the
model, the LoRA and its scale, the size, the steps, the scheduler, the guidance, and the images per job
(so that a group's size in images is its size in jobs times one number). The key is a digest of those,
stored on the job when it is submitted (`jobs.fuse_key`); a worker that claims a job with a key also
claims queued jobs with the same key (core/jobs.py `claim_partners`) and runs them as one call
(workers/fusion.py). Other job types get no key and always run alone: training is never fused, and the
image modes would need their input images batched too.
"""

import hashlib
import json
from typing import Any

from core.memo import Memo

FUSED_TYPES = frozenset({"text2img"})
# The params that may differ between the jobs of one call.
PER_IMAGE = frozenset({"prompt", "negative_prompt", "seed"})


def fuse_key(
    job_type: str, model: str | None, params: dict[str, Any], memo: Memo | None = None
) -> str | None:
    """The fusion key of a job (64 hex digits), or None if it always runs alone. With `memo` (one per
    request), jobs whose shared params are the same scalars (a batch that varies prompts and seeds) are
    digested once; a value that is a list or an object (a LoRA) is digested every time."""
    if job_type not in FUSED_TYPES or model is None:
        return None
    shared = {name: value for name, value in params.items() if name not in PER_IMAGE}
    if memo is not None:
        # The type is part of the key: 1, 1.0 and True are equal in Python but not in the digest's JSON.
        shape = (job_type, model, *((name, type(value), value) for name, value in shared.items()))
        try:
            return memo.get(("fuse_key", shape), lambda: _digest(job_type, model, shared))
        except TypeError:  # unhashable: a list or an object among the values
            pass
    return _digest(job_type, model, shared)


def _digest(job_type: str, model: str, shared: dict[str, Any]) -> str:
    text = json.dumps([job_type, model, shared], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
