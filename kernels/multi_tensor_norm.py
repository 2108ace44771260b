"""Per-tensor squared L2 norms of gradients and weights, and their ratio, in one pass (Auto-RGN).

Implements the per-tensor norm table of docs/performance.md; the loop hands these norms
to `Strategy.update_scales` (style.md section 3). For every pair i of a gradient g_i and its
weight w_i (same shape):

    grad_sumsq[i]   = sum_j g_i[j]^2
    weight_sumsq[i] = sum_j w_i[j]^2
    ratio[i]        = sqrt(grad_sumsq[i]) / (sqrt(weight_sumsq[i]) + eps)

Bytes: every element of every g_i and w_i is read once, sum_i numel_i * (esize(g_i) + esize(w_i));
written: 4 B per chunk of CHUNK elements (partial sums, read once more by the reduction) and 12 n B
of results. Bandwidth floor = bytes read / memory bandwidth, e.g. ResNet-50 in fp32 is
2 x 25.6 M x 4 B = 204 MB, 68 us at 3.0 TB/s.

Shapes and dtypes: lists of n >= 1 tensors, g_i.shape == w_i.shape, any size from 0 elements to
hundreds of millions (addresses are int64); float32, bfloat16 or float16, mixed within a call (a
grad and its weight may differ). Any dense layout (contiguous, channels-last, any permutation) is
read as its underlying storage, since a norm does not depend on element order. A non-dense tensor
(a strided slice, an expanded view) raises ValueError instead of being copied: a copy would be
made on every call and would have an address the cached table cannot know.

Triton path (one launch per dtype group, plus one reduction launch, no host synchronisation):
the 2n sources (grads, then weights) are grouped by dtype and cut into chunks of CHUNK elements.
A device int64 table holds one row per chunk: (start address, length). Each program of
`_multi_tensor_norm_kernel` casts its address to a typed pointer, sums squares in float32 and
writes one partial; `_norm_reduce_kernel` adds each source's contiguous run of partials in float64
and writes the three outputs. The table is built once per tensor list and cached: the key is
(device, every data_ptr, every (shape, dtype)), so the same list, or grads re-allocated at the
same addresses (the caching allocator usually does after `zero_grad(set_to_none=True)`), reuses it,
and weights changed in place are read afresh. Any tensor at a new address builds a new table,
uploaded from pinned memory with non_blocking=True, so a rebuild costs Python time but no sync.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import attrgetter
from typing import NamedTuple

import torch
from torch import Tensor

from kernels.dispatch import (CacheInfo, PlanCache, check_lengths, check_tensor, group_chunk_rows, kernel_backend,
                              upload_int64)

CHUNK = 65536  # elements per program: enough work per program, few partials per tensor
BLOCK = 4096  # elements per loop step of one program; CHUNK / BLOCK = 16 steps
REDUCE_BLOCK = 1024


def multi_tensor_norm_reference(grads: Sequence[Tensor], weights: Sequence[Tensor], eps: float = 1e-12,
                                out_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """The definition: per-tensor sums of squares accumulated in float64. Does not validate.

    Args:
        grads: n tensors of any float dtype.
        weights: n tensors, weights[i].numel() == grads[i].numel().
        eps: added to the weight norm in the ratio's denominator.
        out_dtype: dtype of the results (tests ask for float64).

    Returns:
        (grad_sumsq, weight_sumsq, ratio), each of shape (n,) and `out_dtype`, on grads[0].device.
    """
    # vector_norm with dtype=float64 converts before it accumulates, so the sum is float64.
    g = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in grads])
    w = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in weights])
    return (g * g).to(out_dtype), (w * w).to(out_dtype), (g / (w + eps)).to(out_dtype)


@functools.cache  # bounded: no arguments, so one entry (the kernels, defined once)
def _norm_kernels() -> tuple:
    """Defines the Triton kernels on first use, so triton stays optional on CPU."""
    import triton
    import triton.language as tl

    @triton.jit
    def _multi_tensor_norm_kernel(chunks, partials, chunk_base, DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                                  BLOCK: tl.constexpr):
        row = chunk_base + tl.program_id(0)
        start = tl.load(chunks + 2 * row).to(tl.pointer_type(DTYPE), bitcast=True)
        if ALIGNED:  # a 16-byte aligned start lets the unmasked loads below be 16-byte vector loads
            start = tl.multiple_of(start, 16)
        length = tl.load(chunks + 2 * row + 1).to(tl.int32)
        full = length // BLOCK * BLOCK
        acc = tl.zeros((BLOCK,), tl.float32)
        for offset in tl.range(0, full, BLOCK):
            x = tl.load(start + offset + tl.arange(0, BLOCK)).to(tl.float32)
            acc += x * x
        idx = full + tl.arange(0, BLOCK)
        x = tl.load(start + idx, mask=idx < length, other=0.0).to(tl.float32)
        acc += x * x
        tl.store(partials + row, tl.sum(acc, axis=0))

    @triton.jit
    def _norm_reduce_kernel(partials, bounds, out, n, eps, BLOCK: tl.constexpr):
        # Source s owns partials [bounds[s], bounds[2n + s]); grad i is source i, weight i is n + i.
        # Written out twice: the interpreter cannot call a jit helper defined in this closure.
        i = tl.program_id(0)
        begin, end = tl.load(bounds + i), tl.load(bounds + 2 * n + i)
        g = tl.zeros((BLOCK,), tl.float64)
        for offset in tl.range(begin, end, BLOCK):
            idx = offset + tl.arange(0, BLOCK)
            g += tl.load(partials + idx, mask=idx < end, other=0.0).to(tl.float64)
        begin, end = tl.load(bounds + n + i), tl.load(bounds + 3 * n + i)
        w = tl.zeros((BLOCK,), tl.float64)
        for offset in tl.range(begin, end, BLOCK):
            idx = offset + tl.arange(0, BLOCK)
            w += tl.load(partials + idx, mask=idx < end, other=0.0).to(tl.float64)
        g_sum, w_sum = tl.sum(g, axis=0), tl.sum(w, axis=0)
        tl.store(out + i, g_sum.to(tl.float32))
        tl.store(out + n + i, w_sum.to(tl.float32))
        tl.store(out + 2 * n + i, (tl.sqrt(g_sum) / (tl.sqrt(w_sum) + eps)).to(tl.float32))

    tl_dtypes = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    return _multi_tensor_norm_kernel, _norm_reduce_kernel, tl_dtypes


# ---- the launcher ----

class _NormPlan(NamedTuple):
    launches: tuple[tuple[tuple[torch.dtype, bool], int, int], ...]  # ((dtype, aligned), first row, rows)
    chunks: Tensor  # int64 (C, 2): start address, length
    bounds: Tensor  # int64 (2, 2n): first and end chunk row of each source
    partials: Tensor  # float32 (C,)


_NORM_PLANS = PlanCache()  # at most PlanCache.maxsize (8) chunk tables
_ptr = torch.Tensor.data_ptr
_shape_dtype = attrgetter("shape", "dtype")


def multi_tensor_norm_cache_info() -> CacheInfo:
    """Hits and builds of the cached chunk tables since the process started."""
    return _NORM_PLANS.info()


def _validate(grads: Sequence[Tensor], weights: Sequence[Tensor]) -> torch.device:
    """Checks every pair (see `multi_tensor_norm`'s Raises) and returns their device."""
    check_lengths(grads=grads, weights=weights)
    if not isinstance(grads[0], Tensor):
        raise ValueError(f"grads[0] is {type(grads[0]).__name__}; expected a tensor")
    device = grads[0].device
    for i, (g, w) in enumerate(zip(grads, weights)):
        check_tensor(f"grads[{i}]", g, device)
        check_tensor(f"weights[{i}]", w, device, (f"grads[{i}]", g))
    return device


def _chunk_rows(t: Tensor) -> list[tuple[int, int]]:
    base, esize, numel = t.data_ptr(), t.element_size(), t.numel()
    return [(base + k * esize, min(CHUNK, numel - k)) for k in range(0, numel, CHUNK)]


def _build_norm_plan(grads: Sequence[Tensor], weights: Sequence[Tensor]) -> _NormPlan:
    device = _validate(grads, weights)
    sources = [*grads, *weights]
    keys = [(t.dtype, t.data_ptr() % 16 == 0) for t in sources]
    rows, launches, spans = group_chunk_rows(keys, lambda s: _chunk_rows(sources[s]))
    flat = [v for row in rows for v in row]
    table = upload_int64(flat + [b for b, _ in spans] + [e for _, e in spans], device)
    return _NormPlan(launches, table[: len(flat)], table[len(flat):],
                     torch.empty(len(rows), dtype=torch.float32, device=device))


def multi_tensor_norm(grads: Sequence[Tensor], weights: Sequence[Tensor],
                      eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """Squared norms of each grad and weight, and the grad/weight norm ratio, on the device.

    Args:
        grads: n >= 1 dense tensors, float32/bfloat16/float16, any shapes, one device.
        weights: n tensors, weights[i].shape == grads[i].shape, same device, any of those dtypes.
        eps: added to the weight norm in the ratio's denominator.

    Returns:
        (grad_sumsq, weight_sumsq, ratio), each float32 of shape (n,) on the inputs' device;
        nothing is copied to the host.

    Raises:
        ValueError: empty or unequal lists, a shape mismatch, tensors on different devices, a
            non-float or non-dense tensor, or an unknown MEDFT_KERNELS value.
    """
    check_lengths(grads=grads, weights=weights)
    device = grads[0].device if isinstance(grads[0], Tensor) else None
    if device is None or kernel_backend(device) == "reference":
        _validate(grads, weights)
        return multi_tensor_norm_reference(grads, weights, eps)
    # The key costs one C-level pass per attribute; validation runs only when a plan is built.
    try:
        key = (device, tuple(map(_ptr, grads)), tuple(map(_ptr, weights)),
               tuple(map(_shape_dtype, grads)), tuple(map(_shape_dtype, weights)))
    except (TypeError, AttributeError):  # a non-tensor in a list: let validation name it
        _validate(grads, weights)
        raise
    plan = _NORM_PLANS.get(key, lambda: _build_norm_plan(grads, weights))
    main_kernel, reduce_kernel, tl_dtypes = _norm_kernels()
    for (dtype, aligned), first, count in plan.launches:
        main_kernel[(count,)](plan.chunks, plan.partials, first, DTYPE=tl_dtypes[dtype], ALIGNED=aligned,
                              BLOCK=BLOCK, num_warps=8)
    n = len(grads)
    out = torch.empty((3, n), dtype=torch.float32, device=device)
    reduce_kernel[(n,)](plan.partials, plan.bounds, out, n, eps, BLOCK=REDUCE_BLOCK)
    grad_sumsq, weight_sumsq, ratio = out.unbind(0)
    return grad_sumsq, weight_sumsq, ratio
