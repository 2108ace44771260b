"""`run_grid`: this process's share of a grid, in the mode `grid.parallel` names."""
from __future__ import annotations

import logging
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
from engine.grid.worker import INTERRUPTED, DatasetCache, GridTally, Worker, requeue_failed
from engine.tracking import require_wandb

log = logging.getLogger(__name__)

def run_grid(grid: GridConfig, source: str = "grid", worker: Worker | None = None,
             retry_failed: bool = False, restart_changed: bool = False) -> dict[str, str]:
    """Runs this process's share of the grid and returns every cell's final state.

    Args:
        retry_failed: first give every failed cell a fresh attempt count (done by rank 0 alone:
            the launcher's other ranks find the cells pending once it has).
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
    with _signals_as_interrupt():
        if retry_failed and worker.rank == 0:
            for cell_id in requeue_failed(cells, grid, worker):
                log.info("cell %s: failed before; re-queued with a fresh attempt count", cell_id)
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
def _signals_as_interrupt():
    """Ctrl-C and SIGTERM (a scheduler's or the launcher's stop) unwind as KeyboardInterrupt,
    releasing the claim. The handler sets INTERRUPTED first, so that an error the interrupt turns
    into on its way up (torch.save makes one) is still taken for the interrupt (worker.py)."""
    INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a process started in the background may have inherited it ignored.
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
