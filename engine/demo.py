"""`medft demo`: a generated dataset, the demo grid (configs/demo.yaml) on it, and its report.

Everything runs in this one process on the CPU and finishes in a few minutes on two cores.
Running it again continues (finished cells are kept); delete the output folder to start over.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from configs import preset_path
from engine.config import apply_overrides, read_yaml
from engine.data.synthetic import make_demo_dataset
from engine.grid.config import dataset_path, grid_from_dict
from engine.grid.run import run_grid
from engine.report import write_report

DEMO_IMAGES_PER_CLASS = 80
# The demo's models are so small that a second intra-op thread mostly adds synchronisation, and on
# a busy machine OpenMP's spinning threads made cells 4-10x slower (measured on 2 shared cores).
DEMO_TORCH_THREADS = 1


def run_demo(out: Path, overrides: list[str] = ()) -> int:
    """Generates the data under `out`/data, runs the grid into `out`/grid, writes the report.

    Args:
        overrides: dotted overrides of the demo grid (`cell.trainer.epochs=2`, `seeds=[684]`).

    Returns:
        0 when every cell finished, 1 when some failed (the report lists them).
    """
    start, threads = time.perf_counter(), torch.get_num_threads()
    preset = preset_path("demo.yaml")
    data = apply_overrides(read_yaml(preset), [f"data_root={out / 'data'}", f"out_dir={out / 'grid'}",
                                               *overrides])
    grid = grid_from_dict(data, f"{preset} + demo settings" + (" + overrides" if overrides else ""))
    for entry in grid.datasets:
        make_demo_dataset(dataset_path(grid, entry), per_class=DEMO_IMAGES_PER_CLASS, seed=0)
    print(f"demo dataset: {grid.data_root}; running {grid.name} grid into {grid.out_dir}")
    torch.set_num_threads(DEMO_TORCH_THREADS)
    try:
        states = run_grid(grid, str(preset))
    finally:
        torch.set_num_threads(threads)
    report = write_report(grid.out_dir)
    failed = sorted(cell for cell, state in states.items() if state == "failed")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s"
          + (f"; failed cells: {', '.join(failed)}" if failed else ""))
    print(f"report: {report}")
    return 1 if failed else 0
