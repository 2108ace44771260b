"""Shared by the kernels (kernels.multi_tensor_norm, kernels.sp_grad): backend dispatch, input
validation, and the bounded cache of device plans (chunk tables) each kernel keeps."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_logger = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


def _log_once(reason: str) -> None:
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        _logger.warning("medft kernels: %s; using the PyTorch reference", reason)


def _triton_imported_interpreted() -> bool:
    # triton.language's own jit functions (tl.sum) are decorated when triton is imported: only
    # then does TRITON_INTERPRET decide whether they run in the interpreter.
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)


def kernel_backend(device: torch.device) -> str:
    """'triton' or 'reference' for tensors on `device`, from MEDFT_KERNELS and what can run.

    MEDFT_KERNELS=reference|triton forces one; unset, CUDA uses Triton and other devices the
    reference. A Triton path that cannot run (triton missing, CPU without TRITON_INTERPRET=1,
    CUDA under the interpreter, another device) falls back to the reference and logs once.
    """
    mode = os.environ.get("MEDFT_KERNELS", "")
    if mode not in ("", "reference", "triton"):
        raise ValueError(f"MEDFT_KERNELS={mode!r}: expected 'reference', 'triton' or unset")
    if mode == "reference" or (mode == "" and device.type != "cuda"):
        return "reference"
    try:
        import triton  # noqa: F401  (only to know whether it is installed)
    except ImportError:
        _log_once("triton is not installed")
        return "reference"
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "cpu" and not interpret:
        _log_once("Triton runs on CPU tensors only with TRITON_INTERPRET=1")
    elif device.type == "cpu" and not _triton_imported_interpreted():
        _log_once("TRITON_INTERPRET=1 was set after triton was imported (torchvision imports it); "
                  "set it before")
    elif device.type == "cuda" and interpret:
        _log_once("the Triton interpreter cannot read CUDA memory through an address table")
    elif device.type not in ("cpu", "cuda"):
        _log_once(f"no Triton kernel for device type {device.type!r}")
    else:
        return "triton"
    return "reference"


def is_dense(t: Tensor) -> bool:
    """True when the elements of `t` fill [data_ptr, data_ptr + numel) with no gap or overlap."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def check_tensor(name: str, t: object, device: torch.device, pair: tuple[str, Tensor] | None = None) -> None:
    """Raises ValueError unless `t` is a dense float tensor on `device`, of the shape of `pair`."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} is {type(t).__name__}; expected a tensor")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} has dtype {t.dtype}; expected float32, bfloat16 or float16")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, the first tensor on {device}; all must share a device")
    if pair is not None and t.shape != pair[1].shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {pair[0]} has {tuple(pair[1].shape)}")
    if not is_dense(t):
        raise ValueError(f"{name} with shape {tuple(t.shape)} and strides {t.stride()} is not dense; "
                         "pass .contiguous()")


def check_lengths(**lists: Sequence) -> None:
    """Raises ValueError when the lists are empty or differ in length (cheap: no per-tensor work)."""
    lengths = {name: len(values) for name, values in lists.items()}
    if min(lengths.values()) == 0:
        raise ValueError(f"empty tensor list: lengths {lengths}")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"tensor lists differ in length: {lengths}")


class CacheInfo(NamedTuple):
    hits: int
    builds: int
    size: int


class PlanCache:
    """LRU map from a tensor-list key to a device plan, counting builds and hits.

    Bounded: at most `maxsize` plans (each a few int64 device tensors), least recently used
    evicted first; a loop uses one or two tensor lists per phase, so 8 covers its working set.
    """

    def __init__(self, maxsize: int = 8):
        self.maxsize, self.hits, self.builds = maxsize, 0, 0
        self._plans: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], object]) -> object:
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = build()
            self.builds += 1
            if len(self._plans) > self.maxsize:
                self._plans.popitem(last=False)
        else:
            self.hits += 1
            self._plans.move_to_end(key)
        return plan

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.builds, len(self._plans))


def upload_int64(values: list[int], device: torch.device) -> Tensor:
    """A host list as an int64 device tensor, copied without a host synchronisation."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return host.to(device)
    # Pinned + non_blocking queues the copy on the stream; the caching host allocator keeps the
    # pinned block alive until the copy has run.
    return host.pin_memory().to(device, non_blocking=True)


def group_chunk_rows(keys: Sequence[Hashable], rows_of: Callable[[int], list[tuple[int, ...]]]):
    """Chunk rows of items 0..len(keys)-1, items of one launch key made adjacent.

    Returns:
        (rows, launches, spans): the rows in launch order; (key, first row, row count) per
        launch with at least one row; (first row, end row) of each item.
    """
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    rows, launches, spans = [], [], [(0, 0)] * len(keys)
    for key, items in members.items():
        first = len(rows)
        for i in items:
            start = len(rows)
            rows += rows_of(i)
            spans[i] = (start, len(rows))
        if len(rows) > first:
            launches.append((key, first, len(rows) - first))
    return rows, tuple(launches), spans
