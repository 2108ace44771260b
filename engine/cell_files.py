"""The one owner of a cell folder's layout: its id, its path and the names of the files in it.

A cell is one dataset x backbone x strategy x seed of a grid; its folder is
`<out_dir>/<dataset>__<backbone>__<strategy>__s<seed>/`. Everything that reads or writes a cell
folder (the loop, the grid, the report, the tracker, the bench scripts) takes the names from here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

# Files of a cell folder.
CONFIG_FILE = "config.yaml"  # the resolved config of the cell
METRICS_FILE = "metrics.jsonl"  # one JSON line per completed epoch
RESULT_FILE = "result.json"  # written atomically when the cell is done
BEST_CKPT = "best.pt"  # the best-validation weights
LAST_CKPT = "last.pt"  # the resume state
PREDICTIONS_FILE = "test_predictions.npz"  # the best weights' test labels and probabilities, per image
FAILURE_FILE = "failure.json"  # why the cell's last attempt failed
ATTEMPTS_FILE = "attempts.jsonl"  # one line per start and outcome of an attempt
CLAIMS_DIR = "claims"  # numbered claim files of the workers that took the cell
PROVENANCE_FILE = "provenance.json"  # software, device, threads and data fingerprint of the last start

# Files of a grid's out_dir.
GRID_FILE = "grid.yaml"  # the grid config a run dir was made with
REPORT_DIR = "report"  # what `medft report` writes
RECOMMEND_DIR = "recommend"  # what `medft recommend` writes: one folder per dataset x backbone, with
RECOMMEND_MD, RECOMMEND_JSON, RECOMMEND_FIGURE = "recommend.md", "recommend.json", "curves.png"
REPLACED_DIR = "replaced"  # cells moved aside by a restart: replaced/<time>/<cell id>/

CELL_ID_SEP = "__"  # separates the four parts of a cell id, so no part may contain it


class CellKey(NamedTuple):
    """What names a cell of a grid."""

    dataset: str
    backbone: str
    strategy: str
    seed: int

    @property
    def cell_id(self) -> str:
        return make_cell_id(self.dataset, self.backbone, self.strategy, self.seed)


def make_cell_id(dataset: str, backbone: str, strategy: str, seed: int) -> str:
    return CELL_ID_SEP.join((dataset, backbone, strategy, f"s{seed}"))


def parse_cell_id(cell_id: str) -> CellKey:
    """The inverse of `make_cell_id`.

    Raises:
        ValueError: an id that no grid can have made.
    """
    parts = cell_id.split(CELL_ID_SEP)
    if len(parts) != 4 or not re.fullmatch(r"s-?\d+", parts[3]):
        raise ValueError(f"'{cell_id}' is not a grid cell id (<dataset>{CELL_ID_SEP}<backbone>{CELL_ID_SEP}<strategy>{CELL_ID_SEP}s<seed>)")
    return CellKey(parts[0], parts[1], parts[2], int(parts[3][1:]))


def cell_dir(cfg) -> Path:
    """The folder of a cell: `trainer.out_dir/<cell id>` of its CellConfig."""
    return Path(cfg.trainer.out_dir) / cfg.cell_id
