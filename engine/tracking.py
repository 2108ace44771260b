"""Experiment tracking behind one small protocol; tracking never blocks or fails training.

`WandbTracker` gives every cell its own W&B run (project from the config, group = the grid, name
= the cell id, job type = the strategy, tags = dataset, backbone and seed, config = the resolved
cell config), logs each epoch's row and puts the test metrics in the run summary. All W&B calls
happen on a background thread fed by a bounded queue: `log` never waits, a full queue drops rows
(metrics.jsonl keeps them all), and a slow, failing or unreachable W&B turns the tracker into a
no-op with one warning. Runs are offline by default (files under `tracking.dir`, else the cell's
folder; WANDB_MODE, when set, overrides `tracking.mode`); `medft sync RUN_DIR` uploads them once the
network is there (`sync_offline_runs`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

_QUEUE_ROWS = 10_000  # far more epochs than a cell has: only a stuck W&B ever fills it
_POLL_S = 0.2  # how often the W&B thread looks whether the cell has finished
_WANDB_CLI = [sys.executable, "-m", "wandb"]


class Tracker(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...

    def summary(self, result: dict) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing: the cell's own metrics.jsonl and result.json are the record."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, result: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def require_wandb() -> None:
    """Raises ValueError with the one fix when wandb is not installed."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ValueError("tracking.backend=wandb needs the wandb package: pip install 'medft[wandb]' "
                         "(or set tracking.backend=none)") from None


class WandbTracker:
    """One W&B run, driven from a background thread (see the module docstring).

    Args:
        init_kwargs: keyword arguments of `wandb.init` (settings given as a dict).
        finish_timeout_s: how long `finish` waits for W&B to flush before moving on.
    """

    def __init__(self, init_kwargs: dict, finish_timeout_s: float):
        self.finish_timeout_s = finish_timeout_s
        self.failed = False
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_ROWS)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(init_kwargs,), daemon=True, name="wandb")
        self._thread.start()

    def log(self, metrics: dict, step: int) -> None:
        self._put(("log", dict(metrics), step))

    def summary(self, result: dict) -> None:
        test = {f"test/{k}": v for k, v in result.get("test", {}).items() if k != "confusion_matrix"}
        self._put(("summary", {**test, "best_epoch": result.get("best_epoch"), "train_s": result.get("train_s")}))

    def finish(self) -> None:
        """Asks the thread to finish the run; waits at most `finish_timeout_s`."""
        self._closing.set()
        self._thread.join(self.finish_timeout_s)
        if self._thread.is_alive():
            log.warning("W&B did not finish within %.0f s; it goes on in the background", self.finish_timeout_s)
        if self.dropped:
            log.warning("W&B was too slow: %d rows were not sent (metrics.jsonl has them)", self.dropped)

    def _put(self, item: tuple) -> None:
        if self.failed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _run(self, init_kwargs: dict) -> None:
        try:
            import wandb

            run = wandb.init(**{**init_kwargs, "settings": wandb.Settings(**init_kwargs["settings"])})
            while not (self._closing.is_set() and self._queue.empty()):
                try:
                    kind, *args = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if kind == "log":
                    run.log(args[0], step=args[1])
                else:
                    run.summary.update(args[0])
            run.finish()
        except Exception as e:  # W&B's trouble is never the cell's: warn once and stop tracking
            self.failed = True
            log.warning("W&B tracking is off for run %s: %s: %s", init_kwargs.get("name"), type(e).__name__, e)


def create_tracker(cfg, grid_name: str = "", provenance: dict | None = None) -> Tracker:
    """The tracker `cfg.tracking` asks for, for the cell `cfg` (a CellConfig); `provenance`
    (engine/provenance.py) goes into the run's config beside the cell config.

    Raises:
        ValueError: when `tracking.backend=wandb` and wandb is not installed.
    """
    if cfg.tracking.backend == "none":
        return NullTracker()
    require_wandb()
    return WandbTracker(wandb_init_kwargs(cfg, grid_name, provenance), finish_timeout_s=cfg.tracking.init_timeout_s)


def wandb_init_kwargs(cfg, grid_name: str = "", provenance: dict | None = None) -> dict:
    """`wandb.init` arguments for one cell: a run id derived from the cell's folder, so a resumed
    cell continues the same run."""
    from engine.config import to_dict
    from engine.cell_files import CELL_ID_SEP, cell_dir

    tracking, folder = cfg.tracking, cell_dir(cfg)
    run_id = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    dataset = cfg.cell_id.split(CELL_ID_SEP)[0]
    return {"project": tracking.project, "group": tracking.group or grid_name or None, "name": cfg.cell_id,
            "job_type": cfg.strategy.name, "tags": [dataset, cfg.model.backbone, f"seed_{cfg.trainer.seed}"],
            "config": {**to_dict(cfg), "provenance": provenance}, "dir": tracking.dir or str(folder), "id": run_id,
            "resume": "allow",
            # console off: W&B would otherwise wrap this process's stdout for every run.
            # W&B's own WANDB_MODE, when set, wins over the config (e.g. WANDB_MODE=disabled).
            "settings": {"mode": os.environ.get("WANDB_MODE") or tracking.mode, "init_timeout": tracking.init_timeout_s,
                         "console": "off", "reinit": "create_new", "silent": True}}


def offline_runs(run_dir: str | Path) -> dict[str, list[Path]]:
    """Offline W&B run folders under `run_dir` not yet synced, grouped by run id (a resumed cell
    has one folder per attempt, which must be uploaded in order, by one `wandb sync`)."""
    runs: dict[str, list[Path]] = {}
    for folder in sorted(Path(run_dir).rglob("offline-run-*")):
        files = list(folder.glob("*.wandb"))
        if files and not all(f.with_suffix(".wandb.synced").exists() for f in files):
            runs.setdefault(folder.name.rsplit("-", 1)[-1], []).append(folder)
    return runs


def sync_offline_runs(run_dir: str | Path, jobs: int = 4) -> int:
    """Uploads every unsynced offline run under `run_dir`, `jobs` runs at a time.

    Returns:
        The number of runs that failed to upload (0 when all went up).
    """
    runs = offline_runs(run_dir)
    if not runs:
        print(f"no unsynced offline W&B runs under {run_dir}")
        return 0

    def sync(item: tuple[str, list[Path]]) -> tuple[str, int, str]:
        run_id, folders = item
        done = subprocess.run([*_WANDB_CLI, "sync", *map(str, folders)], capture_output=True, text=True)
        return run_id, done.returncode, (done.stderr or done.stdout).strip()

    failed = 0
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for run_id, code, output in pool.map(sync, runs.items()):
            failed += code != 0
            print(f"{'synced' if code == 0 else 'FAILED'} {run_id}" + (f": {output[-300:]}" if code else ""))
    print(f"{len(runs) - failed} of {len(runs)} runs synced")
    return failed
