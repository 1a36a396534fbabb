"""Imported first by a test worker to make the UNet fail mid-run, as a real fault would.

`DIFFQ_TEST_FAULT` picks the faults, comma-separated:
- `raise_at:N` raises a RuntimeError in the Nth UNet call of the process;
- `oom_at:N` raises torch's OutOfMemoryError there, once;
- `oom_over_batch:B` raises torch's OutOfMemoryError in every UNet call on a batch larger than B, as a
  card too small for big requests would.
"""

import os

import torch
from diffusers import UNet2DConditionModel

faults = dict(
    fault.partition(":")[::2] for fault in os.environ.get("DIFFQ_TEST_FAULT", "").split(",") if fault
)
calls = 0
original_forward = UNet2DConditionModel.forward


def oom(detail: str) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB ({detail})")


def faulty_forward(self, sample, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(faults.get("oom_at", 0)):
        raise oom(f"injected in UNet call {calls}")
    if "oom_over_batch" in faults and sample.shape[0] > int(faults["oom_over_batch"]):
        raise oom(f"injected for a batch of {sample.shape[0]}")
    if calls == int(faults.get("raise_at", 0)):
        raise RuntimeError(f"injected failure in UNet call {calls}")
    return original_forward(self, sample, *args, **kwargs)


if faults:
    UNet2DConditionModel.forward = faulty_forward
