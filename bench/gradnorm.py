"""Per-tensor norms for Auto-RGN: microseconds per call of kernels.multi_tensor_norm and its peers.

Answers the per-tensor norm table of docs/performance.md for the parameter lists of
torchvision's ResNet-50, DenseNet-121 and VGG-19 (random weights and grads). Variants, all in
this process: the kernel, two `torch._foreach_norm` + division (the baseline), the `.item()`
per-tensor loop, and one `vector_norm` over a flat copy of every grad and weight (made once,
outside the timing: the bandwidth proxy). Each gets a row in us and one in GB/s; on a GPU the
floor is bytes of grads + weights at 3.0 TB/s and `--check` exits non-zero when the kernel misses
its target. CPU runs report ratios only; there the kernel runs the reference unless
MEDFT_KERNELS=triton (with TRITON_INTERPRET=1: slow, use --tiny).

    python -m bench.gradnorm [--models resnet50,densenet121,vgg19] [--dtype float32] [--tiny] [--check]
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torchvision

from bench._rows import RowWriter, base_parser, exit_on_missed, time_call
from kernels.dispatch import kernel_backend
from kernels.multi_tensor_norm import multi_tensor_norm

MODELS = ("resnet50", "densenet121", "vgg19")
TARGET_US = {"resnet50": 85.0, "densenet121": 35.0, "vgg19": 450.0}  # performance.md, on an H100
BANDWIDTH_B_PER_S = 3.0e12
EPS = 1e-12
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TINY_DIVISOR = 16  # --tiny divides the two leading dimensions of every tensor by this


def param_shapes(model: str, tiny: bool) -> list[tuple[int, ...]]:
    """Shapes of the model's parameters, in order, read from a meta-device instance (no memory)."""
    with torch.device("meta"):
        net = getattr(torchvision.models, model)(weights=None)
    shapes = [tuple(p.shape) for p in net.parameters()]
    if tiny:
        shapes = [tuple(max(1, d // TINY_DIVISOR) for d in s[:2]) + s[2:] for s in shapes]
    return shapes


def make_tensors(shapes, dtype: torch.dtype, device: torch.device) -> tuple[list, list]:
    """(grads, weights): random tensors of `shapes`; grads are 1e-3 times smaller, like real ones."""
    weights = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, device=device, dtype=dtype) * 1e-3 for s in shapes]
    return grads, weights


def variants(grads, weights) -> dict[str, Callable[[], object]]:
    """The calls to time, baseline first; each computes every tensor's grad/weight norm ratio."""
    flat = torch.cat([t.flatten() for t in grads + weights])  # once, outside the timing

    def foreach_div():
        return torch.stack(torch._foreach_norm(grads)) / (torch.stack(torch._foreach_norm(weights)) + EPS)

    def item_loop():  # the reference code of performance.md: one host sync per tensor
        return [g.norm().item() / (w.norm().item() + EPS) for g, w in zip(grads, weights)]

    backend = kernel_backend(grads[0].device)
    return {"foreach_norm_x2_div": foreach_div,
            f"multi_tensor_norm[{backend}]": lambda: multi_tensor_norm(grads, weights, EPS),
            "item_per_tensor": item_loop,
            "flat_vector_norm": lambda: torch.linalg.vector_norm(flat)}


def bench_model(writer: RowWriter, model: str, args, device: torch.device) -> float:
    """Adds the rows of one model; returns the kernel's median in us."""
    dtype = getattr(torch, args.dtype)
    grads, weights = make_tensors(param_shapes(model, args.tiny), dtype, device)
    nbytes = sum(t.numel() * t.element_size() for t in grads + weights)
    on_gpu = device.type == "cuda"
    floor_us = nbytes / BANDWIDTH_B_PER_S * 1e6 if on_gpu else None
    case = f"{model}{'-tiny' if args.tiny else ''}/{SHORT_DTYPE[args.dtype]}"
    baseline, kernel_us = {}, float("nan")
    for name, fn in variants(grads, weights).items():
        seconds = time_call(fn, device, args.warmup, args.repeats)
        base = {} if not baseline else {"baseline": "foreach_norm_x2_div"}
        row = writer.add(case, name, [s * 1e6 for s in seconds], "us", baseline_value=baseline.get("us"),
                         floor=floor_us, **base)
        gbps = writer.add(case, name, [nbytes / s / 1e9 for s in seconds], "GB/s",
                          baseline_value=baseline.get("GB/s"), floor=BANDWIDTH_B_PER_S / 1e9 if on_gpu else None,
                          higher_is_better=True, **base)
        if not baseline:
            baseline = {"us": row["value"], "GB/s": gbps["value"]}
        if name.startswith("multi_tensor_norm"):
            kernel_us = row["value"]
    return kernel_us


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--dtype", default="float32", choices=sorted(SHORT_DTYPE))
    parser.add_argument("--tiny", action="store_true", help="shrink every tensor (for tests; no targets)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if unknown := sorted(set(models) - set(MODELS)):
        parser.error(f"--models: unknown {unknown}; expected some of {', '.join(MODELS)}")
    device = torch.device(args.device)
    writer = RowWriter("gradnorm", device, args.out)
    kernel_us = {model: bench_model(writer, model, args, device) for model in models}
    writer.print_table()
    if args.check and (device.type != "cuda" or args.tiny):
        print("--check: the targets apply to full-size lists on a GPU; this run reports ratios only",
              file=sys.stderr)
    elif args.check:
        exit_on_missed([f"{m}: multi_tensor_norm {us:.1f} us > target {TARGET_US[m]:.0f} us"
                        for m, us in kernel_us.items() if us > TARGET_US[m]])


if __name__ == "__main__":
    main()
