"""grid.parallel=cells: each process claims a free cell, trains it alone and claims the next.

Any number of processes share the queue in `out_dir` (launcher ranks, `medft grid` processes,
hosts on one file system); a process returns when every cell is done or out of retries.
"""
from __future__ import annotations

import time

from engine.cell_files import cell_dir
from engine.config import CellConfig
from engine.grid.claims import failed_attempts, try_claim
from engine.grid.config import GridConfig
from engine.grid.worker import MAX_POLL_S, DatasetCache, GridTally, Worker, cell_state, run_cell


def work_cells(cells: list[CellConfig], grid: GridConfig, worker: Worker, tally: GridTally,
               cache: DatasetCache) -> dict[str, str]:
    """Claims and trains cells until none is left; returns every cell's final state."""
    while True:
        states = {cfg.cell_id: cell_state(cfg, grid) for cfg in cells}
        tally.update(states)
        todo = [cfg for cfg in cells if states[cfg.cell_id] == "pending"]
        if not todo and "running" not in states.values():
            return states
        # Retries after first attempts (a transient failure gets time to pass), then cells of an
        # already loaded dataset; sorted() is stable, so grid order otherwise.
        for cfg in sorted(todo, key=lambda c: (failed_attempts(cell_dir(c)) > 0, not cache.holds(c))):
            claim = try_claim(cell_dir(cfg), grid.grid.stale_after_s)
            if claim is not None:
                tally.cell_seconds.append(run_cell(cfg, claim, grid, cache, worker))
                break
        else:
            time.sleep(min(grid.grid.heartbeat_s, MAX_POLL_S))
