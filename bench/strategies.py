"""What strategies cost: LP with and without the feature cache, and BitFit/LoRA against FT.

LP cache (`--only lp_cache`): mean epoch time of LP with and without the feature cache, over a real cell.

Both runs train the same LP cell (`train_cell`) on the same generated JPEG/PNG dataset (or
`--data`) for `--epochs` epochs in this process, from the same backbone weights (a file, as
pretrained weights would be). An epoch's time is its training plus its validation pass; the first
cached cell's includes building the train and validation caches (in its first epoch). A second
cached cell (another seed) then finds the features the first one built, as the next cells of a
grid worker do. Target (docs/performance.md): uncached/cached >= 10x over 10 epochs for the first cached
cell; `--check` exits non-zero below it. Early stopping is off so every run runs every epoch.

Parameter-efficient strategies (`--only peft`): for ft, bitfit and lora on the same backbone, the
trainable-parameter count, the time of one training step (`engine.epochs.train_step` on a synthetic
batch already on the device, the plan of epoch 0 applied) and, on CUDA, the peak memory allocated
over those steps (weights, optimizer state, activations); each against FT's in the same run.

    python -m bench.strategies [--backbone resnet50] [--size 64] [--epochs 10] [--data DIR] [--only peft]
"""
from __future__ import annotations

import gc
import json
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from bench._rows import RowWriter, base_parser, exit_on_missed, time_call
from bench.train_step import medft_context
from engine.config import load_cell_config
from engine.data.synthetic import make_demo_dataset
from engine.feature_cache import clear_shared_rows
from engine.models import create_backbone
from engine.cell_files import METRICS_FILE, cell_dir
from engine.epochs import train_step
from engine.trainer import train_cell

TARGET_RATIO = 10.0
PEFT_STRATEGIES = ("ft", "bitfit", "lora")  # ft first: the baseline of the others


def epoch_seconds(data: Path, out: Path, args, cached: bool, weights: Path, seed: int = 684) -> list[float]:
    cfg = load_cell_config(None, [f"model.weights={weights}", f"trainer.seed={seed}",
        f"data.path={data}", f"data.resize={args.size + args.size // 8}", f"data.crop={args.size}",
        f"data.num_workers={args.workers}", f"data.train_batch_size={args.batch}", f"model.backbone={args.backbone}",
        "strategy.name=lp", f"trainer.epochs={args.epochs}", f"trainer.patience={args.epochs}",
        f"trainer.device={args.device}", f"trainer.feature_cache={str(cached).lower()}", f"trainer.out_dir={out}"])
    train_cell(cfg)
    rows = [json.loads(line) for line in (cell_dir(cfg) / METRICS_FILE).read_text().splitlines()]
    return [r["perf/feature_cache_s"] + r["perf/epoch_s"] + r["perf/val_s"] for r in rows]


def peft_rows(args, writer: RowWriter) -> None:
    """Trainable parameters, step time and (CUDA) peak memory of each of PEFT_STRATEGIES, against FT's."""
    device = torch.device(args.device)
    case = f"{args.backbone}/bs{args.batch}/{args.size}px"
    baselines: dict[str, float] = {}
    for strategy in PEFT_STRATEGIES:
        ctx = medft_context(SimpleNamespace(backbone=args.backbone, amp="auto", device=args.device, compile=False,
                                            channels_last=None, classes=3), strategy)
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
        labels = torch.randint(0, 3, (args.batch,), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = iter(range(10 ** 9))
        seconds = time_call(lambda: train_step(ctx, images, labels, next(step), 0), device, args.warmup, args.repeats)
        measures = [("trainable_params", [float(sum(p.numel() for p in ctx.trainable_params))], "params"),
                    ("step", seconds, "s/step")]
        if device.type == "cuda":
            measures.append(("peak_memory", [torch.cuda.max_memory_allocated(device) / 2 ** 20], "MiB"))
        for measure, samples, unit in measures:
            row = writer.add(case, f"{strategy}_{measure}", samples, unit, baseline=f"ft_{measure}",
                             baseline_value=baselines.get(measure))
            baselines.setdefault(measure, row["value"])
        del ctx, images, labels  # the next strategy's peak must not include this one's model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def lp_cache_rows(args, writer: RowWriter) -> list[str]:
    """Mean epoch time of LP without the feature cache, with it, and for a next cell reusing it;
    returns the missed target, if it is."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else make_demo_dataset(Path(tmp) / "data", per_class=args.per_class,
                                                                     size=args.size + args.size // 8)
        weights = Path(tmp) / "backbone.pth"
        torch.save(create_backbone(args.backbone, 1000, "none").state_dict(), weights)
        case = f"lp/{args.backbone}/{args.size}px/{args.epochs}ep"
        clear_shared_rows()
        # Means, not medians: the cached run pays for its cache in epoch 0, and that cost counts.
        uncached = writer.add(case, "lp_uncached", epoch_seconds(data, Path(tmp) / "plain", args, False, weights),
                              "s/epoch", statistic=statistics.mean)
        cached = writer.add(case, "lp_feature_cache", epoch_seconds(data, Path(tmp) / "cached", args, True, weights),
                            "s/epoch", baseline="lp_uncached", baseline_value=uncached["value"],
                            statistic=statistics.mean)
        reused = writer.add(case, "lp_feature_cache_next_cell",
                            epoch_seconds(data, Path(tmp) / "next", args, True, weights, seed=559), "s/epoch",
                            baseline="lp_uncached", baseline_value=uncached["value"], statistic=statistics.mean)
    print(f"uncached/cached mean epoch time over {args.epochs} epochs: {cached['vs_baseline']:.1f}x "
          f"(a next cell on the same backbone: {reused['vs_baseline']:.1f}x)")
    return [] if cached["vs_baseline"] >= TARGET_RATIO else [
        f"{case}: uncached/cached = {cached['vs_baseline']:.1f}x < {TARGET_RATIO}x"]


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40, help="generated images per class (3 classes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", help="an image dataset to use instead of generated images")
    parser.add_argument("--only", choices=["lp_cache", "peft"], help="one of the two measurements (default: both)")
    args = parser.parse_args(argv)
    writer = RowWriter("strategies", torch.device(args.device), args.out)
    missed = lp_cache_rows(args, writer) if args.only != "peft" else []
    if args.only != "lp_cache":
        peft_rows(args, writer)
    writer.print_table()
    if args.check:
        exit_on_missed(missed)


if __name__ == "__main__":
    main()
