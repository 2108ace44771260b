"""`medft demo`: a generated dataset of real JPEG/PNG files and a few cells trained on it."""
from __future__ import annotations

import time
from pathlib import Path

from engine.cli import preset_path
from engine.config import load_cell_config
from engine.data.synthetic import make_demo_dataset
from engine.trainer import cell_dir, train_cell

DEMO_STRATEGIES = ("ft", "lp")


def run_demo(out: Path, overrides: list[str] = ()) -> int:
    start = time.perf_counter()
    data_root = make_demo_dataset(out / "data", seed=0)
    print(f"demo dataset: {data_root}")
    rows = []
    for strategy in DEMO_STRATEGIES:
        cfg = load_cell_config(preset_path("demo.yaml"), [f"data.path={data_root}", f"strategy.name={strategy}",
                                                          f"trainer.out_dir={out / 'cells'}", *overrides])
        result = train_cell(cfg)
        rows.append((strategy, result["test"]["accuracy"], result["test"]["balanced_accuracy"], cell_dir(cfg)))
    print(f"\n{'strategy':<10} {'test acc':>9} {'bal. acc':>9}  results")
    for strategy, acc, bacc, path in rows:
        print(f"{strategy:<10} {acc:>9.3f} {bacc:>9.3f}  {path}")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; results are in {out / 'cells'}")
    return 0
