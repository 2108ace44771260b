"""Training step throughput: medft's loop step against a bare PyTorch loop on the same model.

Both run in this process, on synthetic data already on the device, with the same backbone,
batch, image size and precision: the bare loop is autocast + cross-entropy + backward + fused
Adam step, nothing else; medft's step is `engine.steps.train_step` under an FT plan (strategy
hook, loss bookkeeping and all). Target (docs/performance.md): medft >= 0.97
of the bare loop; `--check` exits non-zero below it on a GPU.

    python -m bench.train_step --backbone resnet50 --batch 128 --size 224 [--amp bf16] [--compile]
"""
from __future__ import annotations

import argparse
import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench._rows import RowWriter, base_parser, exit_on_missed, time_call
from engine.config import load_cell_config
from engine.plan_apply import apply_plan
from engine.run_context import build_context
from engine.steps import train_step
from strategies.protocol import Progress

TARGET_RATIO = 0.97


def medft_context(args, strategy: str = "ft"):
    """The cell context of `strategy` on `args.backbone`, with its epoch-0 plan applied."""
    overrides = [f"model.backbone={args.backbone}", "model.weights=none", f"strategy.name={strategy}",
                 f"trainer.amp={args.amp}",
                 f"trainer.device={args.device}", f"trainer.compile={str(args.compile).lower()}"]
    if args.channels_last is not None:
        overrides.append(f"trainer.channels_last={str(args.channels_last).lower()}")
    cfg = load_cell_config(None, overrides)
    ctx = build_context(cfg, SimpleNamespace(classes=[str(i) for i in range(args.classes)]))
    apply_plan(ctx, ctx.strategy.plan(Progress(0, 1)), 0)
    return ctx


def bare_step_fn(ctx, images, labels):
    """The same model and precision in the plainest loop torch offers."""
    model = copy.deepcopy(ctx.model).train()
    forward = torch.compile(model) if ctx.cfg.trainer.compile else model
    fused = {"fused": True} if ctx.device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)

    def step():
        with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None):
            loss = F.cross_entropy(forward(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ctx = medft_context(args)
    fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    writer = RowWriter("train_step", device, args.out)
    case = f"{args.backbone}/bs{args.batch}/{args.size}px/{ctx.amp_dtype or 'fp32'}" + ("/compiled" if args.compile else "")
    to_img_per_s = lambda seconds: [args.batch / s for s in seconds]  # noqa: E731
    bare = writer.add(case, "bare_pytorch", to_img_per_s(time_call(bare_step_fn(ctx, images, labels), device,
                                                                   args.warmup, args.repeats)),
                      "img/s", higher_is_better=True)
    step = iter(range(10 ** 9))
    medft = writer.add(case, "medft_train_step",
                       to_img_per_s(time_call(lambda: train_step(ctx, images, labels, next(step), 0), device,
                                              args.warmup, args.repeats)),
                       "img/s", baseline="bare_pytorch", baseline_value=bare["value"], higher_is_better=True)
    writer.print_table()
    if args.check and device.type == "cuda":
        missed = [] if medft["vs_baseline"] >= TARGET_RATIO else [
            f"{case}: medft/bare = {medft['vs_baseline']:.3f} < {TARGET_RATIO}"]
        exit_on_missed(missed)


if __name__ == "__main__":
    main()
