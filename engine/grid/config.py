"""The grid: datasets x backbones x strategies x seeds, loaded as strictly as a cell config.

A grid YAML names the study's axes and the settings every cell shares; `expand_cells` turns it
into one `CellConfig` per cell, with the id `<dataset>__<backbone>__<strategy>__s<seed>`.
Everything that can be checked before a cell starts is checked here: unknown keys and wrong
types (named with their source, as in engine/config.py), unknown strategies and their override
keys, unknown backbones, missing dataset paths and duplicate cell ids.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.cell_files import CELL_ID_SEP, CellKey
from engine.config import CellConfig, apply_overrides, from_dict, parse_strategy, read_yaml

STUDY_SEEDS = (684, 559, 629)  # docs/protocol.md, shared protocol
BACKBONE_PLACEHOLDER = "{backbone}"  # in cell.model.weights, replaced by each cell's backbone
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Cell settings the grid's own axes decide; setting them under `cell` would be silently ignored.
_SET_BY_GRID = {("data", "path"): "datasets[].path", ("data", "format"): "datasets[].format",
                ("model", "backbone"): "backbones", ("trainer", "seed"): "seeds",
                ("trainer", "out_dir"): "out_dir", ("strategy",): "strategies", ("name",): "the cell id"}


@dataclass
class DatasetEntry:
    name: str = ""
    path: str = ""  # relative paths are under the grid's data_root
    format: Literal["auto", "imagefolder", "csv", "npz"] = "auto"


@dataclass
class GridSettings:
    parallel: Literal["cells", "data"] = "cells"  # cells: one cell per process; data: one cell on all
    retries: int = 2  # a failing cell runs at most 1 + retries times
    heartbeat_s: float = 30.0  # how often a worker refreshes its claim
    stale_after_s: float = 300.0  # a claim not refreshed for this long is taken over
    zero_stage: Literal[0, 1, 2, 3] = 0  # DeepSpeed ZeRO stage for parallel=data
    # Datasets a worker keeps loaded (index and decoded images) for the cells that follow. Cells are
    # dataset-major, so one serves a worker's run; each more costs one dataset's device or pinned memory.
    dataset_cache_size: int = 1


@dataclass
class GridConfig:
    # Defaults only so that a missing key gets a message naming it (grid_from_dict), not a TypeError.
    name: str = ""
    description: str = ""  # one paragraph the report prints under its title (e.g. where the weights come from)
    out_dir: str = ""
    datasets: list[DatasetEntry] = field(default_factory=list)
    backbones: list[str] = field(default_factory=list)
    strategies: list[str | dict] = field(default_factory=list)  # a name, or {name: ..., <its config fields>}
    seeds: list[int] = field(default_factory=lambda: list(STUDY_SEEDS))
    data_root: str = ""  # relative dataset paths are under this folder
    cell: dict = field(default_factory=dict)  # shared settings: data/model/optim/trainer/tracking
    grid: GridSettings = field(default_factory=GridSettings)


def load_grid_config(path: str | Path, overrides: list[str] = ()) -> GridConfig:
    """Loads a grid YAML plus dotted overrides (`cell.trainer.epochs=5`, `seeds=[1,2]`).

    Raises:
        FileNotFoundError: when `path` does not exist.
        ValueError: naming the key and the source for anything `grid_from_dict` rejects.
    """
    source = str(path) + (" + overrides" if overrides else "")
    return grid_from_dict(apply_overrides(read_yaml(path), list(overrides)), source)


def grid_from_dict(data: dict, source: str) -> GridConfig:
    """Builds and checks a GridConfig without touching the file system (see `expand_cells`)."""
    grid = from_dict(GridConfig, data, source)
    for key in ("datasets", "backbones", "strategies", "seeds"):
        if not getattr(grid, key):
            raise ValueError(f"{source}: '{key}' must list at least one entry")
    required = [("out_dir", grid.out_dir)] + [(f"datasets[{i}].path", d.path) for i, d in enumerate(grid.datasets)]
    for key, value in required:
        if not value:
            raise ValueError(f"{source}: '{key}' must be set")
    _check_names(grid, source)
    strategy_configs(grid, source)
    _check_cell_section(grid.cell, source)
    if grid.grid.retries < 0 or grid.grid.heartbeat_s <= 0:
        raise ValueError(f"{source}: 'grid.retries' must be >= 0 and 'grid.heartbeat_s' > 0")
    if grid.grid.dataset_cache_size < 1:
        raise ValueError(f"{source}: 'grid.dataset_cache_size' must be at least 1, got {grid.grid.dataset_cache_size}")
    if grid.grid.stale_after_s < 2 * grid.grid.heartbeat_s:
        raise ValueError(f"{source}: 'grid.stale_after_s' must be at least twice 'grid.heartbeat_s' "
                         f"({grid.grid.stale_after_s} < 2 * {grid.grid.heartbeat_s}): a live claim would look dead")
    return grid


def strategy_configs(grid: GridConfig, source: str = "grid") -> list:
    """Each `strategies` entry as its strategy's config dataclass (overrides checked against it)."""
    configs = []
    for i, entry in enumerate(grid.strategies):
        mapping = {"name": entry} if isinstance(entry, str) else entry
        if "name" not in mapping:
            raise ValueError(f"{source}: 'strategies[{i}]' needs a 'name'")
        configs.append(parse_strategy(mapping, source, f"strategies[{i}]"))
    return configs


def cell_keys(grid: GridConfig) -> list[CellKey]:
    """Every cell of the grid, dataset-major (a worker's dataset cache serves consecutive cells)."""
    names = [s.name for s in strategy_configs(grid)]
    return [CellKey(d.name, b, s, seed) for d in grid.datasets for b in grid.backbones for s in names
            for seed in grid.seeds]


def expand_cells(grid: GridConfig, source: str = "grid") -> list[CellConfig]:
    """One resolved CellConfig per cell, after checking what only the file system can tell.

    Raises:
        ValueError: naming the dataset whose path does not exist, an unknown backbone, or the
            duplicated cell ids (e.g. a strategy listed twice).
    """
    from engine.models import backbone_spec

    for backbone in grid.backbones:
        backbone_spec(backbone)  # raises ValueError naming it
    paths = {d.name: dataset_path(grid, d) for d in grid.datasets}
    for i, entry in enumerate(grid.datasets):
        if not paths[entry.name].exists():
            raise ValueError(f"{source}: 'datasets[{i}].path' of dataset '{entry.name}' does not exist: "
                             f"{paths[entry.name]}")
    keys = cell_keys(grid)
    ids = [k.cell_id for k in keys]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{source}: duplicate cell ids {duplicates}: each dataset, backbone, strategy and seed "
                         "must be listed once")
    return resolve_cells(grid, source)


def resolve_cells(grid: GridConfig, source: str = "grid") -> list[CellConfig]:
    """`expand_cells` without the file-system checks (also for a grid.yaml saved earlier)."""
    paths = {d.name: dataset_path(grid, d) for d in grid.datasets}
    formats = {d.name: d.format for d in grid.datasets}
    overrides = {s.name: entry for s, entry in zip(strategy_configs(grid), grid.strategies)}
    cells = []
    for key in cell_keys(grid):
        data = copy.deepcopy(grid.cell)
        data.setdefault("data", {}).update(path=str(paths[key.dataset]), format=formats[key.dataset])
        model = data.setdefault("model", {})
        model["backbone"] = key.backbone
        if isinstance(model.get("weights"), str):  # one weights file per backbone: model.weights: dir/{backbone}.pth
            model["weights"] = model["weights"].replace(BACKBONE_PLACEHOLDER, key.backbone)
        data.setdefault("trainer", {}).update(seed=key.seed, out_dir=grid.out_dir)
        data.setdefault("tracking", {}).setdefault("group", grid.name)
        entry = overrides[key.strategy]
        data["strategy"] = {"name": entry} if isinstance(entry, str) else copy.deepcopy(entry)
        data["name"] = key.cell_id
        cells.append(from_dict(CellConfig, data, f"{source}, cell {key.cell_id}"))
    return cells


def dataset_path(grid: GridConfig, entry: DatasetEntry) -> Path:
    path = Path(entry.path).expanduser()
    return path if path.is_absolute() or not grid.data_root else Path(grid.data_root).expanduser() / path


def _check_names(grid: GridConfig, source: str) -> None:
    named = [("name", grid.name)] + [(f"datasets[{i}].name", d.name) for i, d in enumerate(grid.datasets)]
    named += [(f"backbones[{i}]", b) for i, b in enumerate(grid.backbones)]
    for key, value in named:
        if not _NAME.match(value) or CELL_ID_SEP in value:
            raise ValueError(f"{source}: '{key}' = {value!r} must be letters, digits, '_', '.' or '-', "
                             f"without '{CELL_ID_SEP}' (it becomes part of cell ids and folder names)")


def _check_cell_section(cell: dict, source: str) -> None:
    """`cell` must be a valid partial CellConfig that leaves the grid's axes alone."""
    for keys, owner in _SET_BY_GRID.items():
        node = cell
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node.get(key), dict) else {}
        if keys[-1] in node:
            raise ValueError(f"{source}: 'cell.{'.'.join(keys)}' is set per cell by the grid's {owner}")
    from_dict(CellConfig, copy.deepcopy(cell), source, "cell")
