"""kernels/multi_tensor_norm.py: the Triton kernel (interpreted on CPU) against the float64 reference."""
import logging
import os

import pytest
import torch

import kernels.dispatch as dispatch
import kernels.multi_tensor_norm as mtn
from kernels.multi_tensor_norm import multi_tensor_norm, multi_tensor_norm_cache_info, multi_tensor_norm_reference

# Error bound, the same for float32, bfloat16 and float16 inputs, relative to the float64 value:
# inputs convert exactly to float32 and bf16/fp16 squares are exact there (fp32 squares round
# once, u = 2^-24); each lane adds at most CHUNK/BLOCK + 1 = 17 terms, the lanes of a chunk are
# summed as a tree (12 levels for 4096; numpy's pairwise sum in the interpreter <= 20), partials
# add in float64, and the result rounds once to float32: <= (1 + 17 + 20 + 1) u < 64 u. The
# ratio's relative error is at most the mean of the two sums' plus one rounding. This is tighter
# than style.md's budget 2|torch same dtype - ref64| + atol with atol = 64 u |ref64|.
RTOL = 64 * 2.0**-24


def _assert_matches_float64(outputs, grads, weights, eps=1e-12):
    expected = multi_tensor_norm_reference(grads, weights, eps, out_dtype=torch.float64)
    for name, got, ref in zip(("grad_sumsq", "weight_sumsq", "ratio"), outputs, expected):
        assert got.dtype == torch.float32 and got.shape == (len(grads),), name
        assert torch.isfinite(got).all(), f"{name} has a non-finite value: {got}"
        err = (got.double() - ref).abs()
        bad = err > RTOL * ref.abs()
        assert not bad.any(), f"{name}[{bad.nonzero().flatten().tolist()}]: {got[bad]} vs {ref[bad]}"


@pytest.mark.parametrize("draw", range(3))
def test_multi_tensor_norm_matches_float64_reference_when_dtypes_and_layouts_mixed(use_triton, make_tensor_lists,
                                                                                     draw):
    grads, weights = make_tensor_lists(2)
    _assert_matches_float64(multi_tensor_norm(grads, weights), grads, weights)


def test_multi_tensor_norm_matches_float64_reference_when_tensor_has_millions_of_elements(use_triton, seed):
    grads = [torch.randn(3_000_017), torch.randn(5).bfloat16()]
    weights = [torch.randn(3_000_017).half(), torch.randn(5)]
    _assert_matches_float64(multi_tensor_norm(grads, weights), grads, weights)


def test_multi_tensor_norm_matches_float64_reference_on_conv_net_params(use_triton, tiny_conv_net_tensors):
    grads, params = tiny_conv_net_tensors
    assert any(p.dim() == 4 and not p.is_contiguous() for p in params)  # channels-last convs are covered
    _assert_matches_float64(multi_tensor_norm(grads, params, eps=1e-8), grads, params, eps=1e-8)


def test_multi_tensor_norm_ratio_is_zero_when_grad_is_zero(use_triton):
    grads, weights = [torch.zeros(3, 3), torch.ones(2)], [torch.ones(3, 3), torch.ones(2)]
    grad_sumsq, _, ratio = multi_tensor_norm(grads, weights)
    assert grad_sumsq[0] == 0 and ratio[0] == 0
    assert torch.equal(grad_sumsq[1], torch.tensor(2.0))


def test_multi_tensor_norm_ratio_is_finite_when_weight_is_zero(use_triton):
    grads, weights = [torch.ones(5), torch.randn(3)], [torch.zeros(5), torch.randn(3)]
    _assert_matches_float64(multi_tensor_norm(grads, weights), grads, weights)


def test_multi_tensor_norm_reuses_chunk_table_when_same_list_again(use_triton, make_tensor_lists):
    grads, weights = make_tensor_lists(2)
    multi_tensor_norm(grads, weights)
    first = multi_tensor_norm_cache_info()
    for w in weights:
        w.mul_(-3.0)
    # Poison the cached partial sums: every one must be rewritten by the next call.
    next(reversed(mtn._NORM_PLANS._plans.values())).partials.fill_(float("nan"))
    outputs = multi_tensor_norm(list(grads), list(weights))  # new list objects, same tensors
    second = multi_tensor_norm_cache_info()
    assert (second.builds, second.hits) == (first.builds, first.hits + 1)
    _assert_matches_float64(outputs, grads, weights)


def test_multi_tensor_norm_rebuilds_chunk_table_when_tensor_moves(use_triton, make_tensor_lists):
    grads, weights = make_tensor_lists(2)
    multi_tensor_norm(grads, weights)
    first = multi_tensor_norm_cache_info()
    grads[-1] = grads[-1].clone() * 2  # a new allocation, as after zero_grad(set_to_none=True)
    outputs = multi_tensor_norm(grads, weights)
    assert multi_tensor_norm_cache_info().builds == first.builds + 1
    _assert_matches_float64(outputs, grads, weights)


def test_multi_tensor_norm_uses_reference_when_kernels_env_is_reference(monkeypatch, make_tensor_lists):
    monkeypatch.setenv("MEDFT_KERNELS", "reference")
    grads, weights = make_tensor_lists(2)
    before = multi_tensor_norm_cache_info()
    outputs = multi_tensor_norm(grads, weights)
    assert multi_tensor_norm_cache_info() == before
    for got, ref in zip(outputs, multi_tensor_norm_reference(grads, weights)):
        assert torch.equal(got, ref)


def test_multi_tensor_norm_falls_back_and_logs_once_when_interpreter_off(use_triton, monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_logged_reasons", set())
    grads, weights = [torch.randn(4, 3)], [torch.randn(4, 3)]
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        outputs = [multi_tensor_norm(grads, weights) for _ in range(2)]
    assert len(caplog.records) == 1 and "TRITON_INTERPRET=1" in caplog.records[0].getMessage()
    for got, ref in zip(outputs[1], multi_tensor_norm_reference(grads, weights)):
        assert torch.equal(got, ref)


def _bad_inputs():
    t = torch.randn(4, 6)
    return {
        "empty": ([], []),
        "length_mismatch": ([t], [t, t]),
        "shape_mismatch": ([t], [torch.randn(6, 4)]),
        "integer_tensor": ([t, torch.ones(3, dtype=torch.int64)], [t, torch.ones(3)]),
        "other_device": ([t, torch.randn(2)], [t, torch.randn(2, device="meta")]),
        "not_dense": ([t[:, ::2]], [torch.randn(4, 3)]),
        "none_grad": ([t, None], [t, t]),
    }


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_multi_tensor_norm_raises_value_error_when_input_bad(monkeypatch, backend, case):
    monkeypatch.setenv("MEDFT_KERNELS", backend)
    grads, weights = _bad_inputs()[case]
    with pytest.raises(ValueError):
        multi_tensor_norm(grads, weights)


def test_multi_tensor_norm_raises_value_error_when_kernels_env_unknown(monkeypatch):
    monkeypatch.setenv("MEDFT_KERNELS", "cuda")
    with pytest.raises(ValueError, match="MEDFT_KERNELS"):
        multi_tensor_norm([torch.ones(2)], [torch.ones(2)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA device and TRITON_INTERPRET=0 (the interpreter reads host memory only)")
def test_multi_tensor_norm_matches_reference_without_host_sync_when_on_cuda(make_tensor_lists):
    grads, weights = ([t.cuda() for t in ts] for ts in make_tensor_lists(2))
    multi_tensor_norm(grads, weights)  # builds the table and compiles the kernels
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call now raises
    try:
        outputs = multi_tensor_norm(grads, weights)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _assert_matches_float64([o.cpu() for o in outputs], [t.cpu() for t in grads], [t.cpu() for t in weights])
