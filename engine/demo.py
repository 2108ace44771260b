"""`medft demo`: a transfer study in miniature, on generated data, with its report.

First each narrow backbone is pretrained on a generated source task (engine/demo_source.py), then
the demo grid (configs/demo.yaml) starts every cell from those weights on the generated target
task (circles, stripes, checkers), as the study starts from ImageNet weights, and the report
says what the source task was. Everything runs in this one process on the CPU and finishes in a
few minutes on two cores. Running it again continues (finished cells and the pretrained weights
are kept); delete the output folder to start over.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from configs import preset_path
from engine.config import apply_overrides, read_yaml
from engine.data.synthetic import make_demo_dataset
from engine.demo_source import SourceTask, describe_source, pretrain_on_source, source_grid, source_weights
from engine.grid.config import GridConfig, dataset_path, grid_from_dict
from engine.grid.run import run_grid
from engine.report import write_report

DEMO_IMAGES_PER_CLASS = 80
# The demo's models are so small that a second intra-op thread mostly adds synchronisation, and on
# a busy machine OpenMP's spinning threads made cells 4-10x slower (measured on 2 shared cores).
DEMO_TORCH_THREADS = 1


def run_demo(out: Path, overrides: list[str] = (), source: SourceTask = SourceTask()) -> int:
    """Generates the data under `out`/data, pretrains into `out`/source, runs the grid into
    `out`/grid and writes its report.

    Args:
        overrides: dotted overrides of the demo grid (`cell.trainer.epochs=2`, `seeds=[684]`);
            `cell.model.weights=none` runs it from random weights instead, without pretraining.
        source: the source task (the pretraining uses the demo grid's backbones and cell settings).

    Returns:
        0 when every cell finished, 1 when some failed (the report lists them).
    """
    start, threads = time.perf_counter(), torch.get_num_threads()
    grid = demo_grid(out, overrides)
    torch.set_num_threads(DEMO_TORCH_THREADS)
    try:
        if grid.cell["model"]["weights"] == str(source_weights(_source_dir(out))):
            pretraining = source_grid(grid, _source_dir(out), source)
            results = pretrain_on_source(pretraining, source)
            grid = replace(grid, description=f"{grid.description} {describe_source(pretraining, source, results)}")
        for entry in grid.datasets:
            make_demo_dataset(dataset_path(grid, entry), per_class=DEMO_IMAGES_PER_CLASS, seed=0)
        print(f"demo dataset: {grid.data_root}; running {grid.name} grid into {grid.out_dir}")
        states = run_grid(grid, f"{preset_path('demo.yaml')} + demo settings")
    finally:
        torch.set_num_threads(threads)
    report = write_report(grid.out_dir)
    failed = sorted(cell for cell, state in states.items() if state == "failed")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s"
          + (f"; failed cells: {', '.join(failed)}" if failed else ""))
    print(f"report: {report}")
    return 1 if failed else 0


def demo_grid(out: Path, overrides: list[str]) -> GridConfig:
    """configs/demo.yaml with its folders under `out` and the source weights, then `overrides`."""
    preset = preset_path("demo.yaml")
    settings = [f"data_root={out / 'data'}", f"out_dir={out / 'grid'}",
                f"cell.model.weights={source_weights(_source_dir(out))}"]
    data = apply_overrides(read_yaml(preset), [*settings, *overrides])
    return grid_from_dict(data, f"{preset} + demo settings" + (" + overrides" if overrides else ""))


def _source_dir(out: Path) -> Path:
    return out / "source"
