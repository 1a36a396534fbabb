"""Imported first by a test worker to make the UNet fail mid-run, as a real fault would.

`DIFFQ_TEST_FAULT` picks the fault: `raise_at:N` raises a RuntimeError in the Nth UNet call of the
process, `oom_at:N` raises torch's OutOfMemoryError there.
"""

import os

import torch
from diffusers import UNet2DConditionModel

kind, _, at = os.environ.get("DIFFQ_TEST_FAULT", "").partition(":")
fail_at = int(at or 0)
calls = 0
original_forward = UNet2DConditionModel.forward


def faulty_forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    global calls
    calls += 1
    if calls == fail_at:
        if kind == "oom_at":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        raise RuntimeError(f"injected failure in UNet call {calls}")
    return original_forward(self, *args, **kwargs)


if kind:
    UNet2DConditionModel.forward = faulty_forward
