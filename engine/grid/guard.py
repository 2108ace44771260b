"""Before any cell of a grid trains: its cells against what `out_dir` already holds.

Two comparisons, both over the keys that change results (engine/config_guard.py):
- each cell folder that is done or resumable, against its saved config.yaml;
- the grid.yaml a previous run left in out_dir, cell by cell for the cells both grids have (a
  grid may grow: new datasets, backbones, strategies or seeds are new cells, not changes).
On a difference the run stops with every changed cell and key, unless `--restart-changed` asks
to move the changed cells' folders to `out_dir/replaced/<time>/`, where they train afresh.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import yaml

from engine.cell_files import GRID_FILE, cell_dir
from engine.config import CellConfig
from engine.config_guard import (ConfigMismatch, cell_folder_differences, changed_cells_lines, config_differences,
                                 folder_state, move_aside, replaced_dir, restart_hint)
from engine.grid.claims import holder
from engine.grid.config import GridConfig, grid_from_dict, resolve_cells
from engine.grid.data_mode import data_parallel_cells

log = logging.getLogger(__name__)

RESTART_COMMAND = "medft grid GRID.yaml ... --restart-changed"


def cells_as_trained(grid: GridConfig, cells: list[CellConfig]) -> list[CellConfig]:
    """The cells as the grid's mode trains them (grid.parallel=data trains each on all ranks)."""
    return data_parallel_cells(cells, grid.grid.zero_stage) if grid.grid.parallel == "data" else cells


def check_out_dir(grid: GridConfig, cells: list[CellConfig], restart_changed: bool = False) -> list[Path]:
    """Stops a grid whose out_dir holds results of another config, or restarts the changed cells.

    Args:
        cells: the grid's cells as they will train (`cells_as_trained`).
        restart_changed: move the changed cells' folders aside instead of stopping.

    Returns:
        Where the moved folders went (empty when nothing changed).

    Raises:
        ConfigMismatch: naming every changed cell, key and both values, and the two ways out.
        ValueError: a changed cell is being trained by a live worker (restart_changed only).
    """
    changed = {}
    for cfg in cells:
        diffs = cell_folder_differences(cfg)
        if diffs:
            changed[cfg.cell_id] = (folder_state(cell_dir(cfg)), diffs)
    saved = saved_grid_differences(grid, cells)
    if not changed and not saved:
        return []
    if not restart_changed:
        raise ConfigMismatch(_message(grid, changed, saved))
    return _restart([cfg for cfg in cells if cfg.cell_id in changed], grid)


def saved_grid_differences(grid: GridConfig, cells: list[CellConfig]) -> dict[str, list[str]]:
    """Each difference between out_dir's grid.yaml and this grid (as text) -> the ids of the cells it is in."""
    path = Path(grid.out_dir) / GRID_FILE
    if not path.is_file():
        return {}
    source = str(path)
    saved_grid = grid_from_dict(yaml.safe_load(path.read_text()), source)
    saved = {c.cell_id: c for c in cells_as_trained(saved_grid, resolve_cells(saved_grid, source))}
    found: dict[str, list[str]] = defaultdict(list)
    for cfg in cells:
        if cfg.cell_id in saved:
            for diff in config_differences(saved[cfg.cell_id], cfg):
                found[str(diff)].append(cfg.cell_id)
    return dict(found)


def _message(grid: GridConfig, changed: dict, saved: dict[str, list[str]]) -> str:
    lines = []
    if saved:
        lines.append(f"{Path(grid.out_dir) / GRID_FILE} was made by another grid (keys that change results "
                     "differ):")
        lines += [f"  {diff} (in {len(ids)} cell(s), e.g. {ids[0]})" for diff, ids in saved.items()]
    if changed:
        lines += changed_cells_lines(grid.out_dir, changed)
    return "\n".join(lines + [restart_hint(RESTART_COMMAND)])


def _restart(cells: list[CellConfig], grid: GridConfig) -> list[Path]:
    into, moved = None, []
    for cfg in cells:
        owner = holder(cell_dir(cfg), grid.grid.stale_after_s)
        if owner is not None:
            raise ValueError(f"cell {cfg.cell_id} is being trained by {owner.get('host')}:{owner.get('pid')} under "
                             "its saved config: stop that worker first, then rerun with --restart-changed")
        if not cell_folder_differences(cfg):  # another process restarted it meanwhile
            continue
        into = into or replaced_dir(grid.out_dir)
        moved.append(move_aside(cell_dir(cfg), into))
        log.warning("cell %s: results of another config moved to %s; it trains afresh", cfg.cell_id, moved[-1])
    return moved
