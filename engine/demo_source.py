"""The demo's source task: each narrow backbone is pretrained on other generated classes first.

The study fine-tunes ImageNet weights; the demo cannot download them, and LP, LP-FT, SP and
gradual unfreezing mean nothing from random weights. So before the demo grid runs, `medft demo`
trains every backbone of that grid with plain FT on a generated *source* task
(engine/data/synthetic.py, task `source`: squares, waves, dots, triangles and grids, none of the
target's classes) and keeps its best-validation weights as `<source out_dir>/<backbone>.pth`,
which the demo grid's `model.weights: .../{backbone}.pth` loads (the source head is replaced for
the target's classes). The pretraining is an ordinary grid of one FT cell per backbone, run by the
project's own loop, so a rerun finds its cells done and only copies their weights again.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine import checkpoint
from engine.cell_files import BEST_CKPT, RESULT_FILE, cell_dir
from engine.data.synthetic import SOURCE_PATTERNS, make_demo_dataset
from engine.grid.run import run_grid
from engine.grid.config import BACKBONE_PLACEHOLDER, DatasetEntry, GridConfig, dataset_path, expand_cells

SOURCE_DATASET = "source_shapes"
SOURCE_STRATEGY = "ft"


@dataclass(frozen=True)
class SourceTask:
    """What the backbones are pretrained on: generated images, trained with FT from random weights.

    Attributes:
        images_per_class: generated images of each of the `SOURCE_PATTERNS` classes.
        epochs: FT epochs (the demo grid's patience and step cap apply).
        image_seed: seed of the generated images (the target's images use 0).
    """

    images_per_class: int = 150
    epochs: int = 10
    image_seed: int = 1

    def __post_init__(self):
        # Three images per class give the 70/15/15 split one of each class in train, val and test.
        if self.images_per_class < 3 or self.epochs < 1:
            raise ValueError(f"source task: images_per_class must be >= 3 and epochs >= 1, got "
                             f"{self.images_per_class} and {self.epochs}")


def source_weights(out_dir: str | Path, backbone: str = BACKBONE_PLACEHOLDER) -> Path:
    """The pretrained weights file of `backbone` (by default the template a grid's model.weights takes)."""
    return Path(out_dir) / f"{backbone}.pth"


def source_grid(demo: GridConfig, out_dir: str | Path, task: SourceTask) -> GridConfig:
    """The pretraining grid: one FT cell per backbone of `demo`, on the source dataset, from random
    weights, with the demo's other cell settings (input size, batch, optimizer, device) and its first seed."""
    cell = copy.deepcopy(demo.cell)
    cell.setdefault("model", {})["weights"] = "none"
    cell.setdefault("trainer", {})["epochs"] = task.epochs
    return replace(demo, name=f"{demo.name}_source", description="", out_dir=str(out_dir),
                   datasets=[DatasetEntry(SOURCE_DATASET, SOURCE_DATASET, "imagefolder")],
                   strategies=[SOURCE_STRATEGY], seeds=demo.seeds[:1], cell=cell)


def pretrain_on_source(grid: GridConfig, task: SourceTask) -> dict[str, dict]:
    """Generates the source images, trains the grid's cells, and writes each backbone's weights file.

    Returns:
        backbone -> the source cell's result (result.json: test metrics on the source task).

    Raises:
        RuntimeError: when a source cell failed (its failure.json says why); the demo cannot start
            from weights that do not exist.
    """
    (entry,) = grid.datasets
    make_demo_dataset(dataset_path(grid, entry), classes=len(SOURCE_PATTERNS), per_class=task.images_per_class,
                      seed=task.image_seed, task="source")
    states = run_grid(grid, f"{grid.name} (engine/demo_source.py)")
    failed = sorted(cell for cell, state in states.items() if state != "done")
    if failed:
        raise RuntimeError(f"source pretraining failed in {grid.out_dir}: {', '.join(failed)}")
    results = {}
    for cfg in expand_cells(grid):
        folder = cell_dir(cfg)
        state = torch.load(folder / BEST_CKPT, map_location="cpu", weights_only=True)
        checkpoint.save_torch_atomic(state, source_weights(grid.out_dir, cfg.model.backbone))
        results[cfg.model.backbone] = json.loads((folder / RESULT_FILE).read_text())
    return results


def describe_source(grid: GridConfig, task: SourceTask, results: dict[str, dict]) -> str:
    """One sentence for the demo report: what the source task was and how well each backbone learned it."""
    accuracy = ", ".join(f"{b} {r['test']['accuracy']:.3f}" for b, r in sorted(results.items()))
    return (f"Every cell starts from weights pretrained on a generated source task: "
            f"{len(SOURCE_PATTERNS)} other classes ({', '.join(SOURCE_PATTERNS)}; {task.images_per_class} images "
            f"each, none of the target's classes), trained with FT from random weights for at most {task.epochs} "
            f"epochs ({grid.name} grid in `{grid.out_dir}`; source test accuracy: {accuracy}).")
