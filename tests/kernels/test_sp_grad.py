"""kernels/sp_grad.py: the fused SP gradient (interpreted on CPU) against the float64 reference."""
import os

import pytest
import torch

import kernels.sp_grad as spg
from kernels.sp_grad import add_sp_grad_, sp_grad_cache_info, sp_grad_reference_

U32 = 2.0**-24
# The final rounding of the float32 result to the grad's dtype: (relative, absolute for
# subnormals). Half an ulp for float32 and float16 (round to nearest); a whole ulp for bfloat16,
# since the Triton 3.8 interpreter truncates float32 to bfloat16 (a GPU rounds to nearest even).
ROUNDING = {torch.float32: (2.0**-24, 2.0**-150), torch.bfloat16: (2.0**-7, 2.0**-133),
            torch.float16: (2.0**-11, 2.0**-25)}


def _float64(tensors):
    return [None if t is None else t.double() for t in tensors]


def _assert_matches_float64(updated, grads0, params, anchors, alpha, beta, norm):
    """Element-wise bound against the update computed in float64 from the original grads.

    The kernel works in float32: alpha/beta round to float32, w - w0 (both exact in float32) rounds
    once, the product and the sum once each (<= 4 u of |g| + |coef * d|, u = 2^-24), then the
    result rounds once to the grad's dtype (ROUNDING), so
        |fast - ref64| <= rel(dtype) |ref64| + abs(dtype) + 8 u (|g| + |coef * d|),
    d = w - w0 (l2), sign(w - w0) (l1) or w (head). For bf16/fp16 grads this is one rounding in
    that dtype, tighter than style.md's 2|torch same dtype - ref64| + atol, where torch also
    rounds w - w0 to that dtype.
    """
    expected = _float64(grads0)
    sp_grad_reference_(expected, _float64(params), _float64(anchors), alpha, beta, norm)
    for i, (got, ref, g0, w, a) in enumerate(zip(updated, expected, grads0, params, anchors)):
        assert torch.isfinite(got).all(), f"grads[{i}] has a non-finite value"
        d = w.double() if a is None else w.double() - a.double()
        coef_d = (beta if a is None else alpha) * (d.sign() if norm == "l1" and a is not None else d)
        rel, tiny = ROUNDING[got.dtype]
        bound = rel * ref.abs() + tiny + 8 * U32 * (g0.double().abs() + coef_d.abs())
        err = (got.double() - ref).abs()
        assert (err <= bound).all(), f"grads[{i}] {got.dtype}: max error {err.max()} vs bound {bound.max()}"


def _random_inputs(make_tensor_lists):
    grads, params, anchors = make_tensor_lists(3)
    anchors[-1] = None  # the head
    anchors[0] = params[0].clone()  # w == w0: sign(0) == 0, no pull
    w = params[1].float()
    anchors[1] = (w + 1e-3 * w.abs().max() * torch.randn_like(w)).to(anchors[1].dtype)  # a near anchor
    return grads, params, anchors


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_add_sp_grad_matches_float64_reference_when_dtypes_and_layouts_mixed(use_triton, make_tensor_lists, norm):
    grads, params, anchors = _random_inputs(make_tensor_lists)
    grads0 = [g.clone() for g in grads]
    add_sp_grad_(grads, params, anchors, alpha=0.1, beta=0.01, norm=norm)
    _assert_matches_float64(grads, grads0, params, anchors, 0.1, 0.01, norm)


def test_add_sp_grad_matches_float64_reference_when_tensor_has_millions_of_elements(use_triton, seed):
    params = [torch.randn(3_000_017).bfloat16(), torch.randn(7, 7)]
    grads = [torch.randn(3_000_017).bfloat16(), torch.randn(7, 7)]
    anchors = [torch.randn(3_000_017), None]
    grads0 = [g.clone() for g in grads]
    add_sp_grad_(grads, params, anchors, alpha=0.3, beta=0.02, norm="l2")
    _assert_matches_float64(grads, grads0, params, anchors, 0.3, 0.02, "l2")


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_add_sp_grad_leaves_grad_unchanged_when_weights_equal_anchors(use_triton, tiny_conv_net_tensors, norm):
    grads, params = tiny_conv_net_tensors
    grads0 = [g.clone() for g in grads]
    add_sp_grad_(grads, params, [p.clone() for p in params], alpha=0.5, beta=0.5, norm=norm)
    assert all(torch.equal(g, g0) for g, g0 in zip(grads, grads0))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_add_sp_grad_matches_float64_reference_on_conv_net_params(use_triton, tiny_conv_net_tensors, norm):
    grads, params = tiny_conv_net_tensors
    anchors = [p + 0.05 * torch.randn_like(p) for p in params[:-2]] + [None, None]  # the Linear head
    grads0 = [g.clone() for g in grads]
    add_sp_grad_(grads, params, anchors, alpha=0.01, beta=0.001, norm=norm)
    _assert_matches_float64(grads, grads0, params, anchors, 0.01, 0.001, norm)


def test_add_sp_grad_reuses_chunk_table_when_same_lists_again(use_triton, make_tensor_lists):
    grads, params, anchors = _random_inputs(make_tensor_lists)
    add_sp_grad_(grads, params, anchors, alpha=0.1, beta=0.01, norm="l2")
    first = sp_grad_cache_info()
    for p in params:
        p.mul_(0.5)
    grads0 = [g.clone() for g in grads]
    add_sp_grad_(list(grads), list(params), list(anchors), alpha=0.2, beta=0.03, norm="l1")
    second = sp_grad_cache_info()
    assert (second.builds, second.hits) == (first.builds, first.hits + 1)
    _assert_matches_float64(grads, grads0, params, anchors, 0.2, 0.03, "l1")


def test_add_sp_grad_uses_reference_when_tensors_on_cpu_by_default(monkeypatch, make_tensor_lists):
    monkeypatch.delenv("MEDFT_KERNELS", raising=False)
    grads, params, anchors = _random_inputs(make_tensor_lists)
    expected = [g.clone() for g in grads]
    before = sp_grad_cache_info()
    add_sp_grad_(grads, params, anchors, alpha=0.1, beta=0.01, norm="l1")
    sp_grad_reference_(expected, params, anchors, alpha=0.1, beta=0.01, norm="l1")
    assert sp_grad_cache_info() == before
    assert all(torch.equal(g, e) for g, e in zip(grads, expected))


def _bad_inputs():
    t, cl = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    return {
        "empty": ([], [], [], "l2"),
        "length_mismatch": ([t], [t], [t, None], "l2"),
        "unknown_norm": ([t], [t.clone()], [None], "l3"),
        "grad_shape_mismatch": ([torch.randn(3, 2, 4, 5)], [t], [None], "l2"),
        "anchor_shape_mismatch": ([t.clone()], [t], [torch.randn(2, 3, 5, 4)], "l1"),
        "layout_mismatch": ([cl], [t], [None], "l2"),
        "integer_tensor": ([t.clone()], [t], [torch.ones(2, 3, 4, 5, dtype=torch.int32)], "l2"),
        "other_device": ([t.clone()], [t], [torch.randn(2, 3, 4, 5, device="meta")], "l2"),
        "not_dense": ([t[:, :, ::2].clone()], [t[:, :, ::2]], [None], "l2"),
        "none_grad": ([None], [t], [None], "l2"),
    }


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_add_sp_grad_raises_value_error_when_input_bad(monkeypatch, backend, case):
    monkeypatch.setenv("MEDFT_KERNELS", backend)
    grads, params, anchors, norm = _bad_inputs()[case]
    with pytest.raises(ValueError):
        add_sp_grad_(grads, params, anchors, alpha=0.1, beta=0.01, norm=norm)


def test_add_sp_grad_builds_no_plan_when_input_bad(use_triton):
    before = spg._SP_PLANS.info()
    with pytest.raises(ValueError, match="memory layout"):
        add_sp_grad_([torch.randn(1, 2, 3, 3)], [torch.randn(1, 2, 3, 3).to(memory_format=torch.channels_last)],
                     [None], alpha=0.1, beta=0.1, norm="l2")
    assert spg._SP_PLANS.info()[1:] == before[1:]  # (builds, size)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA device and TRITON_INTERPRET=0 (the interpreter reads host memory only)")
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_add_sp_grad_matches_float64_reference_without_host_sync_when_on_cuda(make_tensor_lists, norm):
    inputs = _random_inputs(make_tensor_lists)
    grads, params, anchors = ([None if t is None else t.cuda() for t in ts] for ts in inputs)
    add_sp_grad_(grads, params, anchors, alpha=0.1, beta=0.01, norm=norm)  # builds the table, compiles
    grads0 = [g.clone() for g in grads]
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call now raises
    try:
        add_sp_grad_(grads, params, anchors, alpha=0.1, beta=0.01, norm=norm)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = [[None if t is None else t.cpu() for t in ts] for ts in (grads, grads0, params, anchors)]
    _assert_matches_float64(*cpu, 0.1, 0.01, norm)
