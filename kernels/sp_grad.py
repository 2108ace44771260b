"""The L1-SP / L2-SP gradient term, added in place to every gradient in one fused pass.

Implements the extra gradient of the SP-regularized strategies (docs/strategies.md,
L1/L2-SP; style.md section 3, `Strategy.extra_grad_`). For every tensor i, with weight w_i,
gradient g_i and, for backbone tensors, the pretrained anchor w0_i (same shape):

    anchored (w0_i given), norm "l2":  g_i += alpha * (w_i - w0_i)
    anchored (w0_i given), norm "l1":  g_i += alpha * sign(w_i - w0_i)
    head (w0_i is None), either norm:  g_i += beta * w_i

Bytes: anchored tensors read g, w, w0 and write g: numel * (2 esize(g) + esize(w) + esize(w0));
head tensors read g, w and write g. Bandwidth floor = those bytes / memory bandwidth, e.g.
ResNet-50 in fp32, all anchored: 25.6 M x 16 B = 410 MB, 137 us at 3.0 TB/s.

Shapes and dtypes: lists of n >= 1; g_i, w_i, w0_i of one shape and one storage order (any dense
layout: contiguous, channels-last, ...), since elements are matched through memory; float32,
bfloat16 or float16, each list free to use its own dtype per tensor. The update is computed in
float32 and rounded once to g_i's dtype (to nearest even on a GPU; the Triton 3.8 interpreter
truncates to bfloat16). Non-dense tensors raise ValueError (see kernels.multi_tensor_norm for the
layout, and kernels.dispatch for the dispatch, validation and plan cache used here).

Triton path: one launch per group of (grad, weight, anchor) dtypes and 16-byte alignment, over a
cached int64 chunk table with one row per CHUNK elements: (grad address, weight address, anchor
address, length, anchored). A head row points its anchor at its weight and is flagged, so every
program runs the same branch-free body. The table is cached under (device, data_ptrs, shapes,
dtypes, strides) like the norm's; alpha and beta are kernel arguments, so changing them neither
rebuilds nor recompiles. No host synchronisation.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import attrgetter
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from kernels.dispatch import (CacheInfo, PlanCache, check_lengths, check_tensor, group_chunk_rows, kernel_backend,
                              upload_int64)
from kernels.multi_tensor_norm import BLOCK, CHUNK

_ptr, _shape_dtype, _stride = Tensor.data_ptr, attrgetter("shape", "dtype"), Tensor.stride


def sp_grad_reference_(grads: Sequence[Tensor], params: Sequence[Tensor], anchors: Sequence[Tensor | None],
                       alpha: float, beta: float, norm: Literal["l1", "l2"]) -> None:
    """The definition, in the tensors' own dtypes (float64 copies give the exact result).

    Args:
        grads: n tensors, updated in place.
        params: n tensors, params[i].shape == grads[i].shape.
        anchors: n tensors or None (None marks a head tensor, decayed towards 0 with `beta`).
        alpha: strength of the pull towards the anchor.
        beta: weight decay of the head tensors.
        norm: "l2" adds alpha * (w - w0), "l1" adds alpha * sign(w - w0).
    """
    anchored = [i for i, a in enumerate(anchors) if a is not None]
    head = [i for i, a in enumerate(anchors) if a is None]
    if anchored:
        diff = torch._foreach_sub([params[i] for i in anchored], [anchors[i] for i in anchored])
        if norm == "l1":
            diff = torch._foreach_sign(diff)
        torch._foreach_add_([grads[i] for i in anchored], diff, alpha=alpha)
    if head:
        torch._foreach_add_([grads[i] for i in head], [params[i] for i in head], alpha=beta)


@functools.cache  # bounded: no arguments, so one entry (the kernel, defined once)
def _sp_grad_kernel_and_dtypes() -> tuple:
    """Defines the Triton kernel on first use, so triton stays optional on CPU."""
    import triton
    import triton.language as tl

    @triton.jit
    def _sp_grad_kernel(chunks, chunk_base, alpha, beta, G_DTYPE: tl.constexpr, W_DTYPE: tl.constexpr,
                        A_DTYPE: tl.constexpr, L1: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
        row = chunks + 5 * (chunk_base + tl.program_id(0))
        g_ptr = tl.load(row).to(tl.pointer_type(G_DTYPE), bitcast=True)
        w_ptr = tl.load(row + 1).to(tl.pointer_type(W_DTYPE), bitcast=True)
        a_ptr = tl.load(row + 2).to(tl.pointer_type(A_DTYPE), bitcast=True)
        if ALIGNED:  # 16-byte aligned starts let the unmasked loop use 16-byte vector accesses
            g_ptr, w_ptr, a_ptr = tl.multiple_of(g_ptr, 16), tl.multiple_of(w_ptr, 16), tl.multiple_of(a_ptr, 16)
        length = tl.load(row + 3).to(tl.int32)
        anchored = tl.load(row + 4) != 0
        coef = tl.where(anchored, alpha, beta)
        keep = anchored.to(tl.float32)  # a head row's anchor is its weight, multiplied by 0 here
        full = length // BLOCK * BLOCK
        # The same body twice: unmasked full steps (vectorised), then the masked tail.
        for offset in tl.range(0, full, BLOCK):
            idx = offset + tl.arange(0, BLOCK)
            w = tl.load(w_ptr + idx).to(tl.float32)
            d = w - keep * tl.load(a_ptr + idx).to(tl.float32)
            if L1:
                d = tl.where(anchored, tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0), d)
            tl.store(g_ptr + idx, (tl.load(g_ptr + idx).to(tl.float32) + coef * d).to(G_DTYPE))
        idx = full + tl.arange(0, BLOCK)
        mask = idx < length
        w = tl.load(w_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        d = w - keep * tl.load(a_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if L1:
            d = tl.where(anchored, tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0), d)
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        tl.store(g_ptr + idx, (g + coef * d).to(G_DTYPE), mask=mask)

    tl_dtypes = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    return _sp_grad_kernel, tl_dtypes


class _SpPlan(NamedTuple):
    # ((grad, weight, anchor dtype, aligned), first chunk row, chunk count) per launch
    launches: tuple[tuple[tuple[torch.dtype, torch.dtype, torch.dtype, bool], int, int], ...]
    chunks: Tensor  # int64 (C, 5): grad, weight, anchor address, length, anchored


_SP_PLANS = PlanCache()  # at most PlanCache.maxsize (8) chunk tables


def sp_grad_cache_info() -> CacheInfo:
    """Hits and builds of the cached chunk tables since the process started."""
    return _SP_PLANS.info()


def _storage_order(t: Tensor) -> tuple[int, ...]:
    return tuple(s for s, n in zip(t.stride(), t.shape) if n != 1)


def _validate(grads, params, anchors, norm: str) -> torch.device:
    """Raises ValueError on any input `add_sp_grad_` rejects; returns the tensors' device."""
    check_lengths(grads=grads, params=params, anchors=anchors)
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm={norm!r}: expected 'l1' or 'l2'")
    if not isinstance(params[0], Tensor):
        raise ValueError(f"params[0] is {type(params[0]).__name__}; expected a tensor")
    device = params[0].device
    for i, (g, w, a) in enumerate(zip(grads, params, anchors)):
        check_tensor(f"params[{i}]", w, device)
        for name, t in ((f"grads[{i}]", g), (f"anchors[{i}]", a)):
            if name.startswith("anchors") and t is None:
                continue
            check_tensor(name, t, device, (f"params[{i}]", w))
            if _storage_order(t) != _storage_order(w):
                raise ValueError(f"{name} has strides {t.stride()} but params[{i}] has {w.stride()}; "
                                 "they must share a memory layout")
    return device


def _build_sp_plan(grads, params, anchors, norm: str) -> _SpPlan:
    device = _validate(grads, params, anchors, norm)
    # A head tensor reads its weight as its (ignored) anchor, so it groups with that dtype.
    triples = [(g, w, w if a is None else a) for g, w, a in zip(grads, params, anchors)]
    keys = [(*(t.dtype for t in ts), all(t.data_ptr() % 16 == 0 for t in ts)) for ts in triples]

    def rows_of(i: int) -> list[tuple[int, ...]]:
        numel, anchored = triples[i][0].numel(), int(anchors[i] is not None)
        return [(*(t.data_ptr() + k * t.element_size() for t in triples[i]), min(CHUNK, numel - k), anchored)
                for k in range(0, numel, CHUNK)]

    rows, launches, _ = group_chunk_rows(keys, rows_of)
    return _SpPlan(launches, upload_int64([v for row in rows for v in row], device))


def add_sp_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], anchors: Sequence[Tensor | None],
                 alpha: float, beta: float, norm: Literal["l1", "l2"]) -> None:
    """Adds the SP term to every gradient in place, in one fused pass (see the module docstring).

    Args:
        grads: n >= 1 dense tensors, float32/bfloat16/float16, one device; updated in place.
        params: n tensors of the grads' shapes and storage orders, on the same device.
        anchors: n pretrained copies of params (same shape and storage order), or None for the
            head tensors, which get `beta * w` instead.
        alpha: strength of the pull towards the anchors.
        beta: weight decay of the head tensors.
        norm: "l2" adds alpha * (w - w0); "l1" adds alpha * sign(w - w0).

    Raises:
        ValueError: empty or unequal lists, an unknown norm, a shape or memory-layout mismatch,
            tensors on different devices, a non-float or non-dense tensor, or an unknown
            MEDFT_KERNELS value.
    """
    check_lengths(grads=grads, params=params, anchors=anchors)
    device = params[0].device if isinstance(params[0], Tensor) else None
    if device is None or norm not in ("l1", "l2") or kernel_backend(device) == "reference":
        _validate(grads, params, anchors, norm)
        sp_grad_reference_(grads, params, anchors, alpha, beta, norm)
        return
    try:  # validation runs only when a plan is built: the key pins everything it checked
        key = (device, tuple(map(_ptr, grads)), tuple(map(_ptr, params)), tuple(map(_shape_dtype, grads)),
               tuple(map(_shape_dtype, params)), tuple(map(_stride, grads)), tuple(map(_stride, params)),
               tuple(None if a is None else (a.data_ptr(), a.shape, a.dtype, a.stride()) for a in anchors))
    except (TypeError, AttributeError):  # a non-tensor in a list: let validation name it
        _validate(grads, params, anchors, norm)
        raise
    plan = _SP_PLANS.get(key, lambda: _build_sp_plan(grads, params, anchors, norm))
    kernel, tl_dtypes = _sp_grad_kernel_and_dtypes()
    for (g_dtype, w_dtype, a_dtype, aligned), first, count in plan.launches:
        kernel[(count,)](plan.chunks, first, alpha, beta, G_DTYPE=tl_dtypes[g_dtype], W_DTYPE=tl_dtypes[w_dtype],
                         A_DTYPE=tl_dtypes[a_dtype], L1=norm == "l1", ALIGNED=aligned, BLOCK=BLOCK, num_warps=8)
