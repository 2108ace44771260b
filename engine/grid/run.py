"""`run_grid`: this process's share of a grid, in the mode `grid.parallel` names."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from engine import checkpoint
from engine.cell_files import GRID_FILE
from engine.config import CellConfig, to_yaml
from engine.grid.cells_mode import work_cells
from engine.grid.config import GridConfig, expand_cells
from engine.grid.data_mode import work_data_parallel
from engine.grid.guard import cells_as_trained, check_out_dir
from engine.grid.worker import DatasetCache, GridTally, Worker
from engine.tracking import require_wandb


def run_grid(grid: GridConfig, source: str = "grid", worker: Worker | None = None,
             restart_changed: bool = False) -> dict[str, str]:
    """Runs this process's share of the grid and returns every cell's final state.

    Args:
        restart_changed: move the folders of cells whose saved config differs aside and train
            them afresh, instead of stopping (engine/grid/guard.py).

    Raises:
        ValueError: for bad input found before any cell starts (see `expand_cells`), for W&B
            tracking without wandb installed, or (ConfigMismatch) for out_dir results of another config.
    """
    cells = cells_as_trained(grid, expand_cells(grid, source))
    if any(c.tracking.backend == "wandb" for c in cells):
        require_wandb()
    worker = worker or Worker.from_env()
    cells = _place(cells, worker)
    check_out_dir(grid, cells, restart_changed)
    checkpoint.write_text_atomic(to_yaml(grid), Path(grid.out_dir) / GRID_FILE)
    tally, cache = GridTally(grid.name, worker.logs_progress), DatasetCache(grid.grid.dataset_cache_size)
    with _sigterm_as_interrupt():
        if grid.grid.parallel == "data":
            return work_data_parallel(cells, grid, worker, tally, cache)
        return work_cells(cells, grid, worker, tally, cache)


def _place(cells: list[CellConfig], worker: Worker) -> list[CellConfig]:
    """Where CUDA exists, each rank trains its cells on its own GPU, cuda:LOCAL_RANK."""
    if not torch.cuda.is_available():
        return cells
    device = f"cuda:{worker.local_rank % torch.cuda.device_count()}"
    torch.cuda.set_device(device)  # so that libraries using the current device (DALI) agree with the cell
    return [replace(c, trainer=replace(c.trainer, device=device)) if c.trainer.device == "auto" else c
            for c in cells]


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's or the launcher's stop) unwinds like Ctrl-C, releasing the claim."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
