"""What both parallel modes share: this process's rank, one cell's run, the cell states, the
dataset cache and the tally of the grid's progress.

`run_cell` trains one claimed cell and records its outcome in the cell folder (attempts.jsonl,
failure.json); a cell that raises is the cell's failure, never the grid's. The claim is released
whatever happens (also on Ctrl-C), so the cell is free for the next run at once. A signal is never
a cell's failure: once Ctrl-C or SIGTERM set `INTERRUPTED`, whatever error it turned into (torch
makes one of an interrupt inside `torch.save`) stops the worker as the interrupt it is.

A worker that died (SIGKILL, a node failure, the OOM killer) costs its cell an attempt only when
the cell made no progress under it (`settle_takeover`): a preempted cell simply resumes.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import provenance
from engine.cell_files import LAST_CKPT, RESULT_FILE, cell_dir
from engine.config import CellConfig, to_dict
from engine.data.gpu_cache import release_dataset
from engine.data.sources import DatasetIndex, load_index
from engine.grid.claims import (Claim, append_event, attempt_start, clear_failures, failed_attempts, holder,
                                record_failure, try_claim)
from engine.grid.config import GridConfig
from engine.grid.logs import cell_logging
from engine.tracking import NullTracker, create_tracker
from engine.trainer import train_cell

log = logging.getLogger(__name__)

MAX_POLL_S = 5.0  # how often an idle worker looks for freed or abandoned cells, at most
INTERRUPTED = threading.Event()  # set by run_grid's SIGINT / SIGTERM handler before it raises


@dataclass(frozen=True)
class Worker:
    """This process's place among the launcher's ranks (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None) -> Worker:
        """From the launcher's RANK / WORLD_SIZE / LOCAL_RANK (deepspeed, torchrun), else SLURM's
        SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID: `srun` sets no LOCAL_RANK, and without it every
        task of a node would train on cuda:0."""
        env = os.environ if env is None else env

        def read(name: str, slurm_name: str, default: int) -> int:
            return int(env.get(name, env.get(slurm_name, default)))
        return cls(read("RANK", "SLURM_PROCID", 0), read("WORLD_SIZE", "SLURM_NTASKS", 1),
                   read("LOCAL_RANK", "SLURM_LOCALID", 0), "RANK" in env or "SLURM_PROCID" in env)

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


def requeue_failed(cells: list[CellConfig], grid: GridConfig, worker: Worker) -> list[str]:
    """`--retry-failed`: every failed cell gets a fresh attempt count (under its claim, so that no
    worker is settling it meanwhile); returns the ids of the cells re-queued."""
    requeued = []
    for cfg in cells:
        out = cell_dir(cfg)
        if cell_state(cfg, grid) != "failed" or (claim := try_claim(out, grid.grid.stale_after_s)) is None:
            continue
        try:
            if not (out / RESULT_FILE).is_file() and failed_attempts(out) > grid.grid.retries:
                clear_failures(out, worker.rank)
                requeued.append(cfg.cell_id)
        finally:
            claim.release("requeued")
    return requeued


def resume_epoch(out: Path) -> int:
    """The epoch the cell's resume state would start at (0 without one). mmap reads no weights."""
    try:
        state = torch.load(out / LAST_CKPT, map_location="cpu", weights_only=False, mmap=True)
        return int(state["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
        return 0  # none yet, or damaged: the loop starts the cell afresh


def settle_takeover(out: Path, claim: Claim, rank: int) -> None:
    """Charges the attempt of the worker whose dead or hung claim `claim` took over, only when the
    cell made no progress under it (no newer resume state than the attempt started from): a worker
    killed after an epoch (preemption, a neighbour's OOM killer) costs the cell nothing, a cell that
    kills its worker before an epoch completes (a segfault, an OOM) an attempt each time. Settles
    a takeover once (data_mode settles before it decides, `_attempt` again after)."""
    if claim.took_over is None:
        return
    reason, claim.took_over = claim.took_over, None
    started, now = attempt_start(out, claim.number - 1), resume_epoch(out)
    charged = started is None or now <= started.get("resume_epoch", 0)
    append_event(out, "died", rank, reason=reason, charged=charged, resume_epoch=now)
    if charged:
        record_failure(out, f"{reason} before completing an epoch (at epoch {now})", [])
    else:
        log.warning("cell %s: %s after completing epochs; it resumes at epoch %d, no attempt charged",
                    out.name, reason, now)


def run_cell(cfg: CellConfig, claim: Claim, grid: GridConfig, cache: DatasetCache, worker: Worker,
             until_epoch: int | None = None) -> float:
    """Runs one claimed cell (or finds it finished) and releases the claim; returns the wall seconds.

    With `until_epoch` (a rung job of `medft recommend`) the cell pauses once it has that many epochs.
    """
    start, outcome = time.perf_counter(), "interrupted"
    claim.start_heartbeat(grid.grid.heartbeat_s)
    try:
        with cell_logging(cfg.cell_id):
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
    settle_takeover(out, claim, worker.rank)
    attempts = failed_attempts(out)
    if attempts > grid.grid.retries:
        return "failed"
    append_event(out, "start", worker.rank, attempt=attempts + 1, claim=claim.number, resume_epoch=resume_epoch(out))
    log.info("cell %s: start (attempt %d of %d) on rank %d", cfg.cell_id, attempts + 1, grid.grid.retries + 1,
             worker.rank)
    tracker, start = NullTracker(), time.perf_counter()
    try:
        index = cache.get(cfg)  # a dataset that cannot be indexed is this cell's failure
        tracker = create_tracker(cfg, grid.name, provenance.for_cell(cfg, index))
        result = train_cell(cfg, _GuardedTracker(tracker, claim), index=index, until_epoch=until_epoch)
    except (KeyboardInterrupt, ClaimLost) as e:
        append_event(out, "lost" if isinstance(e, ClaimLost) else "interrupted", worker.rank)
        raise
    except Exception as e:  # any cell error is the cell's, never the grid's
        if INTERRUPTED.is_set():  # but a signal turned into an error is still the signal
            append_event(out, "interrupted", worker.rank, reason=f"{type(e).__name__}: {e}")
            raise KeyboardInterrupt(f"interrupted ({type(e).__name__}: {e})") from e
        _record_cell_failure(cfg, e, grid, worker)
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


def _record_cell_failure(cfg: CellConfig, error: Exception, grid: GridConfig, worker: Worker) -> None:
    out, reason = cell_dir(cfg), f"{type(error).__name__}: {error}"
    failed = record_failure(out, reason, traceback.format_exception(error)[-8:])
    append_event(out, "failed", worker.rank, reason=reason)
    # The traceback is in failure.json; -v also prints it here.
    log.error("cell %s: failed (attempt %d of %d): %s", cfg.cell_id, failed, grid.grid.retries + 1, reason,
              exc_info=error if log.isEnabledFor(logging.DEBUG) else None)
