"""Shared by the grid tests: a tiny grid mapping, its YAML, worker processes and what they left."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from engine.cell_files import ATTEMPTS_FILE

REPO = Path(__file__).parents[3]


def tiny_grid(data: Path, out: Path, **changes) -> dict:
    """A grid mapping of 32 px cells on tiny backbones, 2 epochs of 2 steps; `changes` replace keys,
    and `cell` / `grid` changes are merged into those sections."""
    grid = {"name": "t", "out_dir": str(out),
            "datasets": [{"name": "shapes", "path": str(data), "format": "imagefolder"}],
            "backbones": ["tiny_resnet"], "strategies": ["ft", "lp"], "seeds": [684, 559],
            "cell": {"data": {"resize": 36, "crop": 32, "num_workers": 0, "train_batch_size": 16,
                              "eval_batch_size": 32},
                     "model": {"weights": "none"},
                     "trainer": {"epochs": 2, "max_steps_per_epoch": 2, "device": "cpu"}},
            "grid": {"heartbeat_s": 0.2, "stale_after_s": 5.0}}
    for section in ("cell", "grid"):
        for key, value in changes.pop(section, {}).items():
            target = grid[section].setdefault(key, {}) if isinstance(value, dict) else None
            if target is None:
                grid[section][key] = value
            else:
                target.update(value)
    return {**grid, **copy.deepcopy(changes)}


def events(cell: Path) -> list[str]:
    path = cell / ATTEMPTS_FILE
    return [json.loads(line)["event"] for line in path.read_text().splitlines()] if path.is_file() else []


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())["test"] for p in sorted(out.glob("*/result.json"))}


def spawn(config: Path, log: Path, *extra: str, threads: int | None = None,
          entry: tuple[str, ...] = ("-m", "engine.grid")) -> subprocess.Popen:
    """A worker process `python ENTRY CONFIG EXTRA...` writing to `log` (entry: e.g. the command
    line `-m engine.cli grid`, or a test wrapper module)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, *entry, str(config), *extra], cwd=REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path
