"""A grid run folder's cells for the report: each cell folder's result.json / failure.json, and
the cells grid.yaml lists but that never started."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.cell_files import FAILURE_FILE, GRID_FILE, RESULT_FILE, CellKey, parse_cell_id
from engine.grid.config import cell_keys, grid_from_dict


@dataclass
class Cell:
    key: CellKey
    status: str  # done | failed | unfinished | not started
    test: dict = field(default_factory=dict)
    train_s: float | None = None
    best_epoch: int | None = None
    attempts: int = 0  # failed attempts
    reason: str = ""
    folder: Path | None = None
    provenance: dict = field(default_factory=dict)  # result.json's (engine/provenance.py)
    class_counts: dict = field(default_factory=dict)  # split -> images per class (result.json)
    classes: list = field(default_factory=list)


def load_cells(run_dir: Path) -> tuple[str, str, list[Cell]]:
    """The grid's name, its description and its cells: every cell folder, plus cells grid.yaml lists
    but never started."""
    cells = {}
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        try:
            key = parse_cell_id(folder.name)
        except ValueError:
            continue  # not a cell folder (e.g. report/)
        cells[key] = _read_cell(key, folder)
    name, description = run_dir.name, ""
    if (run_dir / GRID_FILE).is_file():
        grid = grid_from_dict(yaml.safe_load((run_dir / GRID_FILE).read_text()), str(run_dir / GRID_FILE))
        name, description = grid.name, grid.description
        for key in cell_keys(grid):
            cells.setdefault(key, Cell(key, "not started"))
    return name, description, sorted(cells.values(), key=lambda c: c.key)


def _read_cell(key: CellKey, folder: Path) -> Cell:
    failure = json.loads((folder / FAILURE_FILE).read_text()) if (folder / FAILURE_FILE).is_file() else {}
    cell = Cell(key, "unfinished", attempts=failure.get("attempts", 0), reason=failure.get("reason", ""),
                folder=folder)
    if (folder / RESULT_FILE).is_file():
        result = json.loads((folder / RESULT_FILE).read_text())
        cell.status, cell.test = "done", result["test"]
        cell.train_s, cell.best_epoch = result.get("train_s"), result.get("best_epoch")
        cell.provenance = result.get("provenance", {})
        cell.class_counts, cell.classes = result.get("class_counts", {}), result.get("classes", [])
    elif failure:
        cell.status = "failed"
    return cell


