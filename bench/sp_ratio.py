"""The SP penalty against the CE gradient, per tensor, on a real cell: is the penalty a regulariser?

Under Adam a step is the gradient divided by its own running RMS, so a penalty term whose size is
above a tensor's cross-entropy gradient sets that tensor's step on its own: with L1-SP,
alpha * sign(w - w0) then pins the tensor near w0 instead of regularising it. This script trains
the cell's L1-/L2-SP for `--warmup-steps` steps (w0 is the starting point, where sign(w - w0) = 0),
then measures over `--batches` batches, per penalised tensor, the RMS of the CE gradient and of
the penalty gradient, and prints one JSON row per tensor and one summary row per alpha:

    ratio = RMS(penalty gradient) / RMS(CE gradient)   (L1: alpha * sqrt(nonzero fraction of w - w0))

The penalty is linear in alpha, so one measurement answers every `--alphas` value.

    python -m bench.sp_ratio --data PATH [--strategy l1_sp] [--alphas 0.01,0.001,0.0001] [--crop 64]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from engine.config import load_cell_config
from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.plan_apply import refresh_optimizer, set_trainable
from engine.run_context import build_context
from engine.steps import backward, train_step
from strategies.protocol import Progress


def _batches(loader, count: int, epoch: int = 0):
    """Up to `count` non-empty batches, the loader restarted as often as needed."""
    seen = 0
    while seen < count:
        loader.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            if batch.labels.numel():
                yield batch
                seen += 1
                if seen == count:
                    return


def measure(ctx, loader, warmup_steps: int, batches: int) -> dict[str, dict[str, float]]:
    """Per penalised tensor: numel, CE-gradient RMS, |w - w0| RMS and the nonzero fraction of w - w0."""
    plan = ctx.strategy.plan(Progress(0, ctx.cfg.trainer.epochs))
    set_trainable(ctx, plan)
    refresh_optimizer(ctx, plan, 0)
    for step, batch in enumerate(_batches(loader, warmup_steps)):
        train_step(ctx, *ctx.to_device(batch.images, batch.labels), step, 0)
    params = dict(ctx.model.named_parameters())
    anchors = {n: a for n, a in ctx.strategy.anchors.items() if a is not None}  # the head's beta term aside
    ce_sq = {n: 0.0 for n in anchors}
    for batch in _batches(loader, batches, epoch=1):
        backward(ctx, *ctx.to_device(batch.images, batch.labels))  # CE only: the loop adds the penalty later
        for n in anchors:
            grad = params[n].grad
            ce_sq[n] += 0.0 if grad is None else float(grad.float().square().mean())
    rows = {}
    for n, anchor in anchors.items():
        diff = (params[n].detach() - anchor).float()
        rows[n] = {"numel": diff.numel(), "ce_grad_rms": (ce_sq[n] / batches) ** 0.5,
                   "diff_rms": float(diff.square().mean().sqrt()), "nonzero": float((diff != 0).float().mean())}
    return rows


def penalty_rms(row: dict, norm: str, alpha: float) -> float:
    return alpha * (row["nonzero"] ** 0.5 if norm == "l1" else row["diff_rms"])


def summary(rows: dict[str, dict], norm: str, alpha: float) -> dict:
    ratios = [penalty_rms(r, norm, alpha) / max(r["ce_grad_rms"], 1e-30) for r in rows.values()]
    weights = [r["numel"] for r in rows.values()]
    pinned = sum(w for w, q in zip(weights, ratios) if q > 1)
    return {"row": "summary", "alpha": alpha, "tensors": len(ratios), "median_ratio": statistics.median(ratios),
            "max_ratio": max(ratios), "tensors_over_1": sum(q > 1 for q in ratios),
            "weights_over_1": pinned / sum(weights)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--strategy", default="l1_sp", choices=["l1_sp", "l2_sp"])
    parser.add_argument("--backbone", default="tiny_resnet")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--alphas", default="0.01,0.001,0.0001")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = load_cell_config(None, [f"data.path={args.data}", f"data.resize={args.crop}", f"data.crop={args.crop}",
                                  "data.num_workers=0", f"model.backbone={args.backbone}", "model.weights=none",
                                  f"strategy.name={args.strategy}", "trainer.device=cpu",
                                  f"trainer.seed={args.seed}"])
    index = load_index(cfg.data)
    ctx = build_context(cfg, index)
    loaders = build_loaders(index, cfg.data, cfg.trainer.seed, ctx.device)
    rows = measure(ctx, loaders.train, args.warmup_steps, args.batches)
    norm = "l1" if args.strategy == "l1_sp" else "l2"
    alphas = [float(a) for a in args.alphas.split(",")]
    for name, row in rows.items():
        ratios = {f"ratio@{a:g}": penalty_rms(row, norm, a) / max(row["ce_grad_rms"], 1e-30) for a in alphas}
        print(json.dumps({"row": "tensor", "tensor": name, **row, **ratios}))
    for alpha in alphas:
        print(json.dumps(summary(rows, norm, alpha)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
