"""What both parallel modes share: this process's rank, one cell's run, the cell states, the
dataset cache and the tally of the grid's progress.

`run_cell` trains one claimed cell and records its outcome in the cell folder (attempts.jsonl,
failure.json); a cell that raises is the cell's failure, never the grid's. The claim is released
whatever happens (also on Ctrl-C), so the cell is free for the next run at once.
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass

from engine import provenance
from engine.cell_files import RESULT_FILE, cell_dir
from engine.config import CellConfig, to_dict
from engine.data.gpu_cache import release_dataset
from engine.data.sources import DatasetIndex, load_index
from engine.grid.claims import Claim, append_event, failed_attempts, holder, record_failure
from engine.grid.config import GridConfig
from engine.tracking import NullTracker, create_tracker
from engine.trainer import train_cell

log = logging.getLogger(__name__)

MAX_POLL_S = 5.0  # how often an idle worker looks for freed or abandoned cells, at most


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
    """The last `size` loaded datasets of this process, keyed by the data config.

    Evicting a dataset also frees its decoded images (engine/data/gpu_cache.py), so a worker holds
    at most `size` datasets in device or pinned memory however many datasets the grid has.
    """

    def __init__(self, size: int):
        self.size = size  # grid.dataset_cache_size, at least 1 (checked by grid_from_dict)
        self.entries: OrderedDict[str, DatasetIndex] = OrderedDict()

    @staticmethod
    def key(cfg: CellConfig) -> str:
        return json.dumps(to_dict(cfg.data), sort_keys=True)

    def holds(self, cfg: CellConfig) -> bool:
        return self.key(cfg) in self.entries

    def get(self, cfg: CellConfig) -> DatasetIndex:
        key = self.key(cfg)
        if key not in self.entries:
            self.entries[key] = load_index(cfg.data)
            while len(self.entries) > self.size:
                self._evict_oldest()
        self.entries.move_to_end(key)
        return self.entries[key]

    def _evict_oldest(self) -> None:
        _, index = self.entries.popitem(last=False)
        # Another entry may be the same folder under a different data config: its images stay.
        if all(str(kept.root) != str(index.root) for kept in self.entries.values()):
            release_dataset(str(index.root))


def cell_state(cfg: CellConfig, grid: GridConfig) -> str:
    """done | failed (no retries left) | running (live claim) | pending (free or abandoned)."""
    out = cell_dir(cfg)
    if (out / RESULT_FILE).is_file():
        return "done"
    if failed_attempts(out) > grid.grid.retries:
        return "failed"
    return "running" if holder(out, grid.grid.stale_after_s) else "pending"


class GridTally:
    """Counts the grid's done / running / failed / pending cells and logs a line when they change.

    Attributes:
        last_counts: the counts last logged (None before the first).
        cell_seconds: wall seconds of each cell this process ran, for the ETA.
    """

    def __init__(self, grid_name: str, logs: bool):
        self.grid_name, self.logs = grid_name, logs
        self.last_counts: dict[str, int] | None = None
        self.cell_seconds: list[float] = []

    def update(self, states: dict[str, str]) -> None:
        counts = {s: sum(v == s for v in states.values()) for s in ("done", "running", "failed", "pending")}
        if not self.logs or counts == self.last_counts:
            return
        self.last_counts = counts
        left = counts["pending"] + counts["running"]
        eta = "ETA after the first cell of this process"
        if self.cell_seconds:
            mean_s = sum(self.cell_seconds) / len(self.cell_seconds)
            eta = f"ETA {mean_s * left / max(1, counts['running']) / 60:.1f} min (mean cell {mean_s:.0f} s)"
        log.info("grid %s: %d/%d done, %d running, %d failed, %d pending; %s", self.grid_name, counts["done"],
                 len(states), counts["running"], counts["failed"], counts["pending"], eta if left else "finished")


def run_cell(cfg: CellConfig, claim: Claim, grid: GridConfig, cache: DatasetCache, worker: Worker) -> float:
    """Runs one claimed cell (or finds it finished) and releases the claim; returns the wall seconds."""
    start, outcome = time.perf_counter(), "interrupted"
    claim.start_heartbeat(grid.grid.heartbeat_s)
    try:
        outcome = _attempt(cfg, claim, grid, cache, worker)
    except ClaimLost:
        outcome = "lost"
        log.warning("cell %s: taken over by another worker; stopped here", cfg.cell_id)
    finally:
        claim.release(outcome)
    return time.perf_counter() - start


def _attempt(cfg: CellConfig, claim: Claim, grid: GridConfig, cache: DatasetCache, worker: Worker) -> str:
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
    tracker, start = NullTracker(), time.perf_counter()
    try:
        index = cache.get(cfg)  # a dataset that cannot be indexed is this cell's failure
        tracker = create_tracker(cfg, grid.name, provenance.for_cell(cfg, index))
        result = train_cell(cfg, _GuardedTracker(tracker, claim), index=index)
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
    append_event(out, "done", worker.rank, wall_s=wall_s)
    log.info("cell %s: done in %.0f s, test accuracy %.4f", cfg.cell_id, wall_s, result["test"]["accuracy"])
    return "done"
