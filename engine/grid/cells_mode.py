"""grid.parallel=cells: each process claims a free cell, trains it alone and claims the next.

Any number of processes share the queue in `out_dir` (launcher ranks, `medft grid` processes,
hosts on one file system); a process returns when every cell is done or out of retries.

Cells are taken in the order that reuses work (`claim_order`): a worker stays on the dataset and
backbone of its last cell while that group has free cells (the decoded dataset, the LP feature
cache and the compiled graph serve them all), and starts a new group where no other worker is
busy, so that each group is loaded by as few workers as possible. A free cell is never left
waiting: a worker with nothing better joins a busy group.
"""
from __future__ import annotations

import time

from engine.cell_files import cell_dir, parse_cell_id
from engine.config import CellConfig
from engine.grid.claims import failed_attempts, try_claim
from engine.grid.config import GridConfig
from engine.grid.worker import MAX_POLL_S, DatasetCache, GridTally, Worker, cell_state, run_cell


def work_group(cfg: CellConfig) -> tuple[str, str]:
    """The cells that share loaded work: one dataset on one backbone."""
    key = parse_cell_id(cfg.cell_id)
    return key.dataset, key.backbone


def claim_order(cells: list[CellConfig], states: dict[str, str], current: tuple[str, str] | None,
                cache: DatasetCache) -> list[CellConfig]:
    """The pending cells, best first: first attempts before retries (a transient failure gets time
    to pass), then this worker's current group, then groups no other worker is busy in, then cells
    of a dataset this worker holds; grid order otherwise (sorted() is stable)."""
    busy = {work_group(c) for c in cells if states[c.cell_id] == "running"}
    pending = [c for c in cells if states[c.cell_id] == "pending"]
    return sorted(pending, key=lambda c: (failed_attempts(cell_dir(c)) > 0, work_group(c) != current,
                                          work_group(c) in busy, not cache.holds(c)))


def work_cells(cells: list[CellConfig], grid: GridConfig, worker: Worker, tally: GridTally,
               cache: DatasetCache) -> dict[str, str]:
    """Claims and trains cells until none is left; returns every cell's final state."""
    current = None  # the work group of this worker's last cell
    while True:
        states = {cfg.cell_id: cell_state(cfg, grid) for cfg in cells}
        tally.update(states)
        order = claim_order(cells, states, current, cache)
        if not order and "running" not in states.values():
            return states
        claim = try_claim(cell_dir(order[0]), grid.grid.stale_after_s) if order else None
        if claim is not None:
            current = work_group(order[0])
            tally.cell_seconds.append(run_cell(order[0], claim, grid, cache, worker))
        elif not order:
            time.sleep(min(grid.grid.heartbeat_s, MAX_POLL_S))
        # else another worker claimed that cell first: look again at once, with it running
