"""A result belongs to the config that produced it: compare a cell folder's saved config.yaml
with the config about to run in it, and move a cell's results aside on an explicit restart.

A cell folder that is done (result.json) or resumable (last.pt) is reused only when its saved
config equals the new one over every key outside `RESULT_NEUTRAL_KEYS` (engine/config.py).
Both sides are read through `CellConfig`, so a key the saved file omits counts as its default.
"""
from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from engine.cell_files import CONFIG_FILE, LAST_CKPT, REPLACED_DIR, RESULT_FILE, cell_dir
from engine.config import RESULT_NEUTRAL_KEYS, CellConfig, from_dict, read_yaml, to_dict

_SHOWN_CELLS = 20  # a mismatch message lists this many cells, then counts the rest


class Difference(NamedTuple):
    key: str  # dotted, e.g. optim.lr
    saved: object
    new: object

    def __str__(self) -> str:
        return f"{self.key}: saved {self.saved!r}, now {self.new!r}"


class ConfigMismatch(ValueError):
    """Results in a folder were made by another config; names the keys, both values and the ways out."""


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL_KEYS)


def config_differences(saved: CellConfig, new: CellConfig) -> list[Difference]:
    """The keys outside RESULT_NEUTRAL_KEYS where the two configs differ, sorted by key."""
    old, now = _flatten(to_dict(saved)), _flatten(to_dict(new))
    missing = object()
    return [Difference(k, old.get(k), now.get(k)) for k in sorted(old.keys() | now.keys())
            if not _neutral(k) and old.get(k, missing) != now.get(k, missing)]


def folder_state(folder: Path) -> str | None:
    """'done', 'resumable' or None (nothing a new run would reuse)."""
    if (folder / RESULT_FILE).is_file():
        return "done"
    return "resumable" if (folder / LAST_CKPT).is_file() else None


def cell_folder_differences(cfg: CellConfig) -> list[Difference]:
    """How the config saved in the cell's folder differs from `cfg` (empty when nothing is reused).
    A done or resumable folder whose config.yaml is missing or no longer loads differs in `config.yaml`."""
    folder = cell_dir(cfg)
    if folder_state(folder) is None:
        return []
    path = folder / CONFIG_FILE
    if not path.is_file():
        return [Difference(CONFIG_FILE, "missing", "this run's config")]
    try:
        saved = from_dict(CellConfig, read_yaml(path), str(path))
    except ValueError as e:
        return [Difference(CONFIG_FILE, f"unreadable ({e})", "this run's config")]
    return config_differences(saved, cfg)


def restart_hint(restart_command: str) -> str:
    return (f"either use a new out_dir, or rerun with `{restart_command}` to move the changed cells' results "
            f"to OUT_DIR/{REPLACED_DIR}/<time>/ and train them afresh")


def changed_cells_lines(where: str, changed: dict[str, tuple[str, list[Difference]]]) -> list[str]:
    """One line per changed cell (cell id -> (its state, its differences))."""
    lines = [f"{where}: {len(changed)} cell(s) hold results of another config (keys that change results differ):"]
    for cell_id, (state, diffs) in list(changed.items())[:_SHOWN_CELLS]:
        lines.append(f"  {cell_id} ({state}): " + "; ".join(map(str, diffs)))
    if len(changed) > _SHOWN_CELLS:
        lines.append(f"  ... and {len(changed) - _SHOWN_CELLS} more")
    return lines


def require_same_config(cfg: CellConfig, restart_command: str = "medft train ... --restart-changed") -> None:
    """Raises ConfigMismatch when the cell's folder holds results of another config."""
    diffs = cell_folder_differences(cfg)
    if diffs:
        state = folder_state(cell_dir(cfg))
        lines = changed_cells_lines(str(cell_dir(cfg).parent), {cfg.cell_id: (state, diffs)})
        raise ConfigMismatch("\n".join(lines + [restart_hint(restart_command)]))


def replaced_dir(out_dir: str | Path) -> Path:
    """A new folder for the cells one restart moves aside, named by the time (and a number when
    another restart took that name)."""
    stamp = Path(out_dir) / REPLACED_DIR / time.strftime("%Y%m%d-%H%M%S")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        folder = stamp.with_name(f"{stamp.name}-{n}") if n else stamp
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def move_aside(folder: Path, into: Path) -> Path:
    """Moves a cell folder (results, checkpoints, claims, attempts) into `into`; returns its new path."""
    target = into / folder.name
    shutil.move(str(folder), str(target))
    return target


def restart_if_changed(cfg: CellConfig) -> Path | None:
    """`--restart-changed` for one cell: moves its folder aside when it holds results of another
    config; returns where it went (None when nothing was moved)."""
    if not cell_folder_differences(cfg):
        return None
    return move_aside(cell_dir(cfg), replaced_dir(cfg.trainer.out_dir))
