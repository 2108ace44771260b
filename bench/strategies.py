"""What the LP feature cache saves: mean epoch time of LP with and without it, over a real cell.

Both runs train the same LP cell (`train_cell`) on the same generated JPEG/PNG dataset (or
`--data`) for `--epochs` epochs in this process, from the same backbone weights (a file, as
pretrained weights would be). An epoch's time is its training plus its validation pass; the first
cached cell's includes building the train and validation caches (in its first epoch). A second
cached cell (another seed) then finds the features the first one built, as the next cells of a
grid worker do. Target (issue 3): uncached/cached >= 10x over 10 epochs for the first cached
cell; `--check` exits non-zero below it. Early stopping is off so every run runs every epoch.

    python -m bench.strategies [--backbone resnet50] [--size 64] [--epochs 10] [--data DIR]
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from bench._rows import RowWriter, base_parser, exit_on_missed
from engine.config import load_cell_config
from engine.data.synthetic import make_demo_dataset
from engine.feature_cache import clear_shared_rows
from engine.models import create_backbone
from engine.cell_files import METRICS_FILE, cell_dir
from engine.trainer import train_cell

TARGET_RATIO = 10.0


def epoch_seconds(data: Path, out: Path, args, cached: bool, weights: Path, seed: int = 684) -> list[float]:
    cfg = load_cell_config(None, [f"model.weights={weights}", f"trainer.seed={seed}",
        f"data.path={data}", f"data.resize={args.size + args.size // 8}", f"data.crop={args.size}",
        f"data.num_workers={args.workers}", f"data.train_batch_size={args.batch}", f"model.backbone={args.backbone}",
        "strategy.name=lp", f"trainer.epochs={args.epochs}", f"trainer.patience={args.epochs}",
        f"trainer.device={args.device}", f"trainer.feature_cache={str(cached).lower()}", f"trainer.out_dir={out}"])
    train_cell(cfg)
    rows = [json.loads(line) for line in (cell_dir(cfg) / METRICS_FILE).read_text().splitlines()]
    return [r["perf/feature_cache_s"] + r["perf/epoch_s"] + r["perf/val_s"] for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40, help="generated images per class (3 classes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", help="an image dataset to use instead of generated images")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    writer = RowWriter("strategies", device, args.out)
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
    writer.print_table()
    if args.check:
        exit_on_missed([] if cached["vs_baseline"] >= TARGET_RATIO else
                       [f"{case}: uncached/cached = {cached['vs_baseline']:.1f}x < {TARGET_RATIO}x"])


if __name__ == "__main__":
    main()
