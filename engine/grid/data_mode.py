"""grid.parallel=data: every rank of the launcher trains the same cell together, one cell at a time.

For datasets too big for one GPU. Rank 0 claims cells from the shared queue exactly as in cells
mode (engine/grid/worker.py: claims, heartbeats, failure records, retries) and broadcasts which
cell comes next; every rank then runs `train_cell` on it with trainer.data_parallel=true
(engine/distributed.py: sharded batches, DeepSpeed gradient averaging, ZeRO stage grid.zero_stage).
A cell's failure is the same on every rank (the loss and the metrics are reduced over all of
them), so all ranks move on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from engine.cell_files import RESULT_FILE, cell_dir
from engine.config import CellConfig
from engine.distributed import init_rank_group
from engine.grid.claims import Claim, failed_attempts, try_claim
from engine.grid.config import GridConfig
from engine.grid.worker import (INTERRUPTED, MAX_POLL_S, DatasetCache, GridTally, Worker, cell_state, run_cell,
                                settle_takeover)
from engine.trainer import train_cell

log = logging.getLogger(__name__)

_DONE, _WAIT = -1, -2  # broadcast instead of a cell index


def data_parallel_cells(cells: list[CellConfig], zero_stage: int) -> list[CellConfig]:
    return [replace(c, trainer=replace(c.trainer, data_parallel=True, zero_stage=zero_stage)) for c in cells]


def work_data_parallel(cells: list[CellConfig], grid: GridConfig, worker: Worker, tally: GridTally,
                       cache: DatasetCache) -> dict[str, str]:
    """Runs every cell over all ranks; returns the final states (rank 0's view, on every rank)."""
    parallel = init_rank_group(grid.grid.zero_stage)

    def settle(cfg: CellConfig, claim: Claim) -> float:
        return run_cell(cfg, claim, grid, cache, worker)
    while True:
        choice, claim = _WAIT, None
        if parallel.is_main:
            states = {cfg.cell_id: cell_state(cfg, grid) for cfg in cells}
            tally.update(states)
            choice, claim = _next_cell(cells, states, grid, settle)
        shared = [choice, states if parallel.is_main else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        choice, states = shared
        if choice == _DONE:
            return states
        if choice == _WAIT:
            time.sleep(min(grid.grid.heartbeat_s, MAX_POLL_S))
            continue
        cfg = cells[choice]
        if parallel.is_main:
            tally.cell_seconds.append(settle(cfg, claim))
        else:
            _follow(cfg, cache)


def _next_cell(cells: list[CellConfig], states: dict[str, str], grid: GridConfig,
               settle) -> tuple[int, Claim | None]:
    """Rank 0's pick: a claimed cell that will train. A claimed cell that will not (finished by
    someone else meanwhile, or out of retries once a takeover is counted) is settled here by
    `settle` (run_cell records and releases it at once), so that the other ranks never start a
    cell rank 0 does not train."""
    pending = [i for i, cfg in enumerate(cells) if states[cfg.cell_id] == "pending"]
    for i in pending:
        out = cell_dir(cells[i])
        claim = try_claim(out, grid.grid.stale_after_s)
        if claim is None:
            continue
        if not (out / RESULT_FILE).is_file():
            settle_takeover(out, claim, rank=0)
        if (out / RESULT_FILE).is_file() or failed_attempts(out) > grid.grid.retries:
            settle(cells[i], claim)
            continue
        return i, claim
    return (_WAIT if pending or "running" in states.values() else _DONE), None


def _follow(cfg: CellConfig, cache: DatasetCache) -> None:
    """A non-zero rank's part of a cell: the same training, no files, no claim, no tracker."""
    try:
        train_cell(cfg, index=cache.get(cfg))
    except Exception as e:  # rank 0 records the failure; every rank saw the same one
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt(f"interrupted ({type(e).__name__}: {e})") from e
        log.debug("cell %s failed on this rank too: %s", cfg.cell_id, e)
