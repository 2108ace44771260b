"""Input pipeline: images per second from image files to normalised batches on the device.

Answers the Input pipeline section of docs/performance.md. Every backend reads the same
files in this process: torchvision (PIL in DataLoader workers, then a copy to the device: the
baseline), dali, and the GPU cache's first epoch (`gpu_cache[<inner decoder>]/ep1`: decode and
store) and later epochs (`/ep2+`: index and normalise). One timed call is one train epoch in the
(seed, epoch) order, ending when its last batch is on the device (synchronised); the value is
images / seconds. Files: JPEGs of --size px that it generates (smooth colour fields with noise),
or --data FOLDER (its train split). On a GPU, `--check` exits non-zero when DALI is under
15,000 img/s on generated 512 px JPEGs; CPU runs report ratios only.

    python -m bench.loader [--size 512] [--images 2048] [--batch 256] [--data FOLDER] [--check]
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench._rows import RowWriter, base_parser, exit_on_missed, time_call
from engine.config import DataConfig
from engine.data.dali import dali_available
from engine.data.gpu_cache import build_gpu_cache_loaders, clear_gpu_cache
from engine.data.loaders import build_loaders
from engine.data.sources import load_index

TARGET_DALI_IMG_PER_S = 15_000.0  # performance.md: DALI mixed decode, 512 px JPEGs, H100
TARGET_SIZE = 512
BASELINE = "torchvision"


def make_jpegs(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """Writes `count` RGB JPEGs of size x size px in two class folders under `root`; returns it."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def run_epoch(batches, epoch: int, device: torch.device) -> int:
    """Reads one epoch, putting every batch on `device`; returns the number of images."""
    batches.set_epoch(epoch)
    images = 0
    for batch in batches:
        batch.images.to(device, non_blocking=True)
        images += batch.labels.numel()
    return images


def measure(loaders_of, device: torch.device, args, fresh: bool) -> list[float]:
    """img/s of `args.repeats` train epochs of the loaders `loaders_of()` builds.

    fresh: each timed epoch gets newly built loaders over an empty GPU cache (the cache's first
    epoch); building is not timed. Otherwise one set of loaders runs at least one untimed epoch
    (DALI builds its pipeline, the cache fills) and then a new epoch order per timed call.
    """
    if fresh:
        samples = []
        for _ in range(args.repeats):
            clear_gpu_cache()
            loaders, counts = loaders_of(), []
            seconds = time_call(lambda: counts.append(run_epoch(loaders.train, 0, device)), device, 0, 1)
            samples.append(counts[0] / seconds[0])
        return samples
    loaders, counts, warmup = loaders_of(), [], max(1, args.warmup)
    epochs = iter(range(warmup + args.repeats))
    seconds = time_call(lambda: counts.append(run_epoch(loaders.train, next(epochs), device)), device, warmup,
                        args.repeats)
    return [n / s for n, s in zip(counts[warmup:], seconds)]


def bench(writer: RowWriter, cfg: DataConfig, args, device: torch.device) -> dict[str, float]:
    """Adds one row per backend; returns variant -> median img/s."""
    index = load_index(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the AMP dtype the loop would ask for
    has_dali = dali_available()
    inner = "dali" if has_dali else "pil"
    variants = {BASELINE: (lambda: build_loaders(index, cfg, 0, device, dtype=dtype), False)}
    if has_dali:
        variants["dali"] = (lambda: build_loaders(index, _with(cfg, loader="dali"), 0, device, dtype=dtype), False)
    else:
        print("nvidia.dali is not importable: no dali row, and the GPU cache decodes with PIL", file=sys.stderr)
    cached = (lambda: build_gpu_cache_loaders(index, cfg, 0, device, dtype=dtype, inner=inner))
    variants[f"gpu_cache[{inner}]/ep1"] = (cached, True)  # the first epoch: decode and store
    variants[f"gpu_cache[{inner}]/ep2+"] = (cached, False)  # later epochs: index and normalise
    case = f"{Path(args.data).name if args.data else f'{args.size}px-jpeg'}/{cfg.resize}-{cfg.crop}/bs{args.batch}"
    medians = {}
    for name, (loaders_of, fresh) in variants.items():
        clear_gpu_cache()
        img_per_s = measure(loaders_of, device, args, fresh)
        base = {} if name == BASELINE else {"baseline": BASELINE, "baseline_value": medians[BASELINE]}
        medians[name] = writer.add(case, name, img_per_s, "img/s", higher_is_better=True, **base)["value"]
    clear_gpu_cache()
    return medians


def _with(cfg: DataConfig, **changes) -> DataConfig:
    return DataConfig(**{**cfg.__dict__, **changes})


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", help="an image folder to read instead of generated JPEGs")
    parser.add_argument("--size", type=int, default=TARGET_SIZE, help="side of the generated JPEGs, px")
    parser.add_argument("--images", type=int, default=2048, help="how many JPEGs to generate")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--resize", type=int, default=232)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers (torchvision) and DALI threads")
    args = parser.parse_args(argv)
    if args.data and not Path(args.data).is_dir():
        parser.error(f"--data: no such folder: {args.data}")
    device = torch.device(args.device)
    writer = RowWriter("loader", device, args.out)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        root = Path(args.data) if args.data else make_jpegs(Path(tmp), args.images, args.size)
        cfg = DataConfig(path=str(root), resize=args.resize, crop=args.crop, num_workers=args.workers,
                         train_batch_size=args.batch, eval_batch_size=args.batch,
                         split_fractions=(1.0, 0.0, 0.0) if not args.data else DataConfig.split_fractions)
        medians = bench(writer, cfg, args, device)
    writer.print_table()
    if args.check and (device.type != "cuda" or args.data or args.size != TARGET_SIZE):
        print("--check: the target applies to generated 512 px JPEGs on a GPU; this run reports ratios only",
              file=sys.stderr)
    elif args.check:
        dali = medians.get("dali", 0.0)
        exit_on_missed([f"dali: {dali:,.0f} img/s < target {TARGET_DALI_IMG_PER_S:,.0f} img/s"]
                       if dali < TARGET_DALI_IMG_PER_S else [])


if __name__ == "__main__":
    main()
