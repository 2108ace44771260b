"""The grid scheduler: processes take cells from a shared queue in `out_dir` until none is left.

`python -m engine.grid CONFIG [key=value ...]` (or `medft grid`) runs a grid YAML
(engine/grid_config.py). Any number of processes may run the same grid at once: the ranks of the
DeepSpeed launcher (`deepspeed --num_gpus 8 --module engine.grid CONFIG`, each rank on
`cuda:LOCAL_RANK`), several `medft grid` processes, or several hosts sharing the file system.
Each process repeatedly claims a free cell (engine/claims.py), trains it with `train_cell` and
moves on, and exits when every cell is done or has failed `1 + grid.retries` times.
- A done cell (result.json) is skipped; a cell killed half-way resumes from its checkpoint.
- A cell that raises is recorded in its folder (failure.json: reason, traceback, attempts) and
  retried later; it never stops the other cells. A worker that died counts as a failed attempt.
- Ctrl-C or SIGTERM releases the claim, so the cell is free for the next run at once.
- Each process keeps the datasets it loaded (DatasetCache) for the cells that follow.
- attempts.jsonl in each cell folder records every start and outcome, with host and pid.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine import checkpoint
from engine.claims import Claim, append_event, failed_attempts, holder, record_failure, try_claim
from engine.config import CellConfig, to_dict, to_yaml
from engine.grid_config import GridConfig, expand_cells, load_grid_config
from engine.tracking import create_tracker, require_wandb
from engine.cell_files import GRID_FILE, RESULT_FILE, cell_dir
from engine.trainer import train_cell

log = logging.getLogger(__name__)

_MAX_POLL_S = 5.0  # how often an idle worker looks for freed or abandoned cells, at most


@dataclass(frozen=True)
class Worker:
    """This process's place among the launcher's ranks (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @classmethod
    def from_env(cls) -> Worker:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   "RANK" in env)

    @property
    def logs_progress(self) -> bool:
        return not self.launched or self.rank == 0


class ClaimLost(Exception):
    """Another worker took this cell over (this one stopped heartbeating for too long)."""


class _GuardedTracker:
    """Passes metrics on and stops the cell at an epoch end once its claim is lost."""

    def __init__(self, tracker, claim: Claim):
        self.tracker, self.claim = tracker, claim

    def log(self, metrics: dict, step: int) -> None:
        self.tracker.log(metrics, step)
        if self.claim.lost:
            raise ClaimLost(self.claim.folder.parent.name)

    def summary(self, result: dict) -> None:
        self.tracker.summary(result)

    def finish(self) -> None:
        self.tracker.finish()


class DatasetCache:
    """The last few loaded DatasetIndex objects of this process, keyed by the data config."""

    def __init__(self, size: int = 2):
        self.size, self.entries = size, OrderedDict()

    @staticmethod
    def key(cfg: CellConfig) -> str:
        return json.dumps(to_dict(cfg.data), sort_keys=True)

    def holds(self, cfg: CellConfig) -> bool:
        return self.key(cfg) in self.entries

    def get(self, cfg: CellConfig):
        from engine.data.sources import load_index

        key = self.key(cfg)
        if key not in self.entries:
            self.entries[key] = load_index(cfg.data)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        return self.entries[key]


def cell_state(cfg: CellConfig, grid: GridConfig) -> str:
    """done | failed (no retries left) | running (live claim) | pending (free or abandoned)."""
    out = cell_dir(cfg)
    if (out / RESULT_FILE).is_file():
        return "done"
    if failed_attempts(out) > grid.grid.retries:
        return "failed"
    return "running" if holder(out, grid.grid.stale_after_s) else "pending"


class Progress:
    """Logs one line whenever the counts of done / running / failed / pending cells change."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.last, self.cell_s = name, enabled, None, []

    def update(self, states: dict[str, str]) -> None:
        counts = {s: sum(v == s for v in states.values()) for s in ("done", "running", "failed", "pending")}
        if not self.enabled or counts == self.last:
            return
        self.last = counts
        left = counts["pending"] + counts["running"]
        eta = "ETA after the first cell of this process"
        if self.cell_s:
            eta_s = sum(self.cell_s) / len(self.cell_s) * left / max(1, counts["running"])
            eta = f"ETA {eta_s / 60:.1f} min (mean cell {sum(self.cell_s) / len(self.cell_s):.0f} s)"
        log.info("grid %s: %d/%d done, %d running, %d failed, %d pending; %s", self.name, counts["done"],
                 len(states), counts["running"], counts["failed"], counts["pending"], eta if left else "finished")


def run_grid(grid: GridConfig, source: str = "grid", worker: Worker | None = None) -> dict[str, str]:
    """Runs this process's share of the grid and returns every cell's final state.

    Raises:
        ValueError: for bad input found before any cell starts (see `expand_cells`), or for W&B
            tracking without wandb installed.
    """
    cells = expand_cells(grid, source)
    if any(c.tracking.backend == "wandb" for c in cells):
        require_wandb()
    worker = worker or Worker.from_env()
    checkpoint.write_text_atomic(to_yaml(grid), Path(grid.out_dir) / GRID_FILE)
    cells = _place(cells, worker)
    progress = Progress(grid.name, worker.logs_progress)
    with _sigterm_as_interrupt():
        if grid.grid.parallel == "data":
            from engine.grid_data_parallel import data_parallel_cells, work_data_parallel
            return work_data_parallel(data_parallel_cells(cells, grid.grid.zero_stage), grid, worker, progress,
                                      DatasetCache())
        return _work(cells, grid, worker, progress)


def _place(cells: list[CellConfig], worker: Worker) -> list[CellConfig]:
    """Where CUDA exists, each rank trains its cells on its own GPU, cuda:LOCAL_RANK."""
    if not torch.cuda.is_available():
        return cells
    device = f"cuda:{worker.local_rank % torch.cuda.device_count()}"
    torch.cuda.set_device(device)  # so that libraries using the current device (DALI) agree with the cell
    return [replace(c, trainer=replace(c.trainer, device=device)) if c.trainer.device == "auto" else c
            for c in cells]


def _work(cells: list[CellConfig], grid: GridConfig, worker: Worker, progress: Progress) -> dict[str, str]:
    cache = DatasetCache()
    while True:
        states = {cfg.cell_id: cell_state(cfg, grid) for cfg in cells}
        progress.update(states)
        todo = [cfg for cfg in cells if states[cfg.cell_id] == "pending"]
        if not todo and "running" not in states.values():
            return states
        # Retries after first attempts (a transient failure gets time to pass), then cells of an
        # already loaded dataset; sorted() is stable, so grid order otherwise.
        for cfg in sorted(todo, key=lambda c: (failed_attempts(cell_dir(c)) > 0, not cache.holds(c))):
            claim = try_claim(cell_dir(cfg), grid.grid.stale_after_s)
            if claim is not None:
                progress.cell_s.append(run_cell(cfg, claim, grid, cache, worker))
                break
        else:
            time.sleep(min(grid.grid.heartbeat_s, _MAX_POLL_S))


def run_cell(cfg: CellConfig, claim: Claim, grid: GridConfig, cache: DatasetCache, worker: Worker,
             until_epoch: int | None = None) -> float:
    """Runs one claimed cell (or finds it finished) and releases the claim; returns the wall seconds.

    With `until_epoch` (a rung job of `medft recommend`) the cell pauses once it has that many epochs.
    """
    start, outcome = time.perf_counter(), "interrupted"
    claim.start_heartbeat(grid.grid.heartbeat_s)
    try:
        outcome = _attempt(cfg, claim, grid, cache, worker, until_epoch)
    except ClaimLost:
        outcome = "lost"
        log.warning("cell %s: taken over by another worker; stopped here", cfg.cell_id)
    finally:
        claim.release(outcome)
    return time.perf_counter() - start


def _attempt(cfg: CellConfig, claim: Claim, grid: GridConfig, cache: DatasetCache, worker: Worker,
             until_epoch: int | None = None) -> str:
    out = cell_dir(cfg)
    if (out / RESULT_FILE).is_file():
        return "done"  # finished by another worker between our look and our claim
    if claim.took_over:
        record_failure(out, claim.took_over, [])
    attempts = failed_attempts(out)
    if attempts > grid.grid.retries:
        return "failed"
    append_event(out, "start", worker.rank, attempt=attempts + 1)
    log.info("cell %s: start (attempt %d of %d) on rank %d", cfg.cell_id, attempts + 1, grid.grid.retries + 1,
             worker.rank)
    tracker, start = create_tracker(cfg, grid.name), time.perf_counter()
    try:
        result = train_cell(cfg, _GuardedTracker(tracker, claim), index=cache.get(cfg), until_epoch=until_epoch)
    except (KeyboardInterrupt, ClaimLost) as e:
        append_event(out, "lost" if isinstance(e, ClaimLost) else "interrupted", worker.rank)
        raise
    except Exception as e:  # any cell error is the cell's, never the grid's
        reason = f"{type(e).__name__}: {e}"
        failed = record_failure(out, reason, traceback.format_exception(e)[-8:])
        append_event(out, "failed", worker.rank, reason=reason)
        log.error("cell %s: failed (attempt %d of %d): %s", cfg.cell_id, failed, grid.grid.retries + 1, reason)
        return "failed"
    finally:
        tracker.finish()
    wall_s = time.perf_counter() - start
    if result is None:
        append_event(out, "paused", worker.rank, wall_s=wall_s, epochs=until_epoch)
        log.info("cell %s: paused at epoch %d after %.0f s", cfg.cell_id, until_epoch, wall_s)
        return "paused"
    append_event(out, "done", worker.rank, wall_s=wall_s)
    log.info("cell %s: done in %.0f s, test accuracy %.4f", cfg.cell_id, wall_s, result["test"]["accuracy"])
    return "done"


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


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="grid YAML (e.g. configs/paper.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cell.trainer.epochs=5 seeds=[684]")
    parser.add_argument("--print-config", action="store_true", help="print the resolved grid and exit")
    parser.add_argument("--list", action="store_true", help="list the cell ids and their states, and exit")
    # The DeepSpeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def grid_command(args: argparse.Namespace) -> int:
    """Runs `medft grid` / `python -m engine.grid`; exit status 1 when some cell failed."""
    grid = load_grid_config(args.config, args.overrides)
    source = args.config + (" + overrides" if args.overrides else "")
    if args.print_config:
        print(to_yaml(grid), end="")
        return 0
    if args.list:
        for cfg in expand_cells(grid, source):
            print(f"{cell_state(cfg, grid):<8} {cfg.cell_id}")
        return 0
    states = run_grid(grid, source)
    failed = sorted(cell for cell, state in states.items() if state == "failed")
    print(f"grid {grid.name}: {len(states) - len(failed)} of {len(states)} cells done in {grid.out_dir}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.grid", description=__doc__.split("\n")[0])
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return grid_command(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"medft grid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medft grid: interrupted; claims released, run the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
