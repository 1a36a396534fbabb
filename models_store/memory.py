"""How much memory a pipeline takes, and how much the pipeline cache may use.

A loaded pipeline's size is the bytes of its modules' parameters and buffers. Before a load, the size is
estimated from the safetensors headers in its folder (names, dtypes and shapes, read without the weights),
so that the cache can make room *before* the new weights arrive.
"""

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Bytes per element of the dtypes a safetensors header may name.
_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
_FLOATING = {"F64", "F32", "F16", "BF16"}


def pipeline_bytes(pipe: Any) -> int:
    """Bytes held by the parameters and buffers of a pipeline's torch modules; 0 for anything else.

    A module shared by two components (or a tensor shared by two modules) is counted once.
    """
    import torch

    components = getattr(pipe, "components", None)
    modules = components.values() if isinstance(components, dict) else [pipe]
    seen_modules: set[int] = set()
    seen_tensors: set[int] = set()
    total = 0
    for module in modules:
        if not isinstance(module, torch.nn.Module) or id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen_tensors:
                seen_tensors.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def estimate_folder_bytes(folder: Path, dtype: "torch.dtype") -> int:
    """The bytes a diffusers folder's weights will take once loaded with floating tensors in `dtype`.

    Reads only the headers of its `*.safetensors` files. Variant files (`*.fp16.safetensors`) are skipped
    where plain ones sit beside them, as `from_pretrained` without a variant skips them too.
    """
    from safetensors import safe_open

    element_size = _torch_element_size(dtype)
    total = 0
    for path in _weight_files(Path(folder)):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = weights.get_slice(name)
                count = math.prod(tensor.get_shape())
                stored = tensor.get_dtype()
                size = element_size if stored in _FLOATING else _SAFETENSORS_DTYPE_BYTES.get(stored, 4)
                total += count * size
    return total


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.safetensors"))
    # `model.safetensors` and `model-00001-of-00002.safetensors` are plain; `model.fp16.safetensors` is not.
    plain_dirs = {f.parent for f in files if f.name.count(".") == 1}
    return [f for f in files if f.name.count(".") == 1 or f.parent not in plain_dirs]


def _torch_element_size(dtype: "torch.dtype") -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def device_memory_bytes(device: "torch.device") -> int:
    """Total memory of `device`: the GPU's VRAM, or the RAM this process may use on the CPU.

    On the CPU that is the machine's RAM, or the container's cgroup memory limit when it is lower.
    """
    import torch

    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return total
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_memory_limit()
    return min(ram, limit) if limit else ram


def _cgroup_memory_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def cache_budget_bytes(device: "torch.device", budget_mb: float, fraction: float) -> int:
    """The pipeline cache's budget: `budget_mb` when set (> 0), else `fraction` of the device's memory."""
    if budget_mb > 0:
        return int(budget_mb * 1024 * 1024)
    return int(device_memory_bytes(device) * fraction)
