"""The one training loop: `train_cell` trains one dataset x backbone x strategy x seed cell.

It asks the strategy, at every epoch start, which parameters train, at what learning rate, with
what extra gradient term and in which phase (strategies/protocol.py), and owns all machinery:
AMP, channels-last, compile, evaluation, early stopping, checkpoints, resume and logging.
An epoch starts, in this order: plan -> trainable set and module modes (recompiling when the set
changed) -> calibration pass if the plan asks -> strategy.update_scales -> optimizer and learning
rates (the plan's schedule, engine/optim.py `epoch_lr`). The step order is documented once, in
engine/steps.py.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine import checkpoint, provenance
from engine.cell_files import (BEST_CKPT, CONFIG_FILE, LAST_CKPT, METRICS_FILE, PREDICTIONS_FILE, PROVENANCE_FILE,
                               RESULT_FILE, cell_dir)
from engine.config import CellConfig, to_yaml
from engine.config_guard import require_same_config
from engine.data.dataset_index import class_counts
from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.epoch_inputs import epoch_inputs
from engine.epochs import evaluate, prediction_metrics, predict, run_train_epoch
from engine.plan_apply import apply_plan, refresh_optimizer, set_trainable, with_scales
from engine.run_context import RunContext, build_context
from engine.steps import calibration_norms
from engine.tracking import NullTracker, Tracker
from strategies.protocol import EpochPlan, Progress

log = logging.getLogger(__name__)


@dataclass
class EarlyStopping:
    """Best-so-far bookkeeping; patience counts within a phase (a new phase starts it afresh)."""

    patience: int
    best_metric: float = -math.inf
    best_epoch: int = -1
    phase_best: float = -math.inf
    epochs_since_best: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Records one validation value; True when it is the best of the whole run."""
        if value > self.phase_best:
            self.phase_best, self.epochs_since_best = value, 0
        else:
            self.epochs_since_best += 1
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, epoch
            return True
        return False

    def new_phase(self) -> None:
        self.phase_best, self.epochs_since_best = -math.inf, 0

    @property
    def exhausted(self) -> bool:
        return self.epochs_since_best >= self.patience


def train_cell(cfg: CellConfig, tracker: Tracker | None = None, index=None, until_epoch: int | None = None
               ) -> dict | None:
    """Trains one cell to completion (or resumes it) and returns its result.

    Writes into trainer.out_dir/<cell id>: config.yaml, metrics.jsonl (one line per epoch),
    last.pt (resume state), best.pt (best-validation weights), test_predictions.npz (their per-image
    test predictions) and result.json (atomically, last).
    A directory that already holds result.json is a finished cell: its result is returned. A
    done or resumable folder whose saved config differs from `cfg` in a key that changes results
    raises ConfigMismatch (engine/config_guard.py). provenance.json (engine/provenance.py) is
    written at every start, and result.json carries the provenance of the attempt that finished.

    In data-parallel mode (trainer.data_parallel) every rank calls this for the same cell; rank 0
    writes the files.

    Args:
        tracker: receives every epoch's metrics and the final summary (default: none).
        index: an already loaded DatasetIndex (grid workers reuse it across cells).
        until_epoch: pause once the cell has this many epochs (a rung of `medft recommend`):
            returns None with last.pt as the resume state, unless the cell finished first. The
            config is untouched, so the schedule and the result are those of an uninterrupted run.
    """
    out = cell_dir(cfg)
    require_same_config(cfg)
    if (out / RESULT_FILE).is_file():
        return json.loads((out / RESULT_FILE).read_text())
    tracker = tracker or NullTracker()
    index = index or load_index(cfg.data)
    ctx = build_context(cfg, index)
    origin = provenance.collect(index, ctx.device)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text_atomic(to_yaml(cfg), out / CONFIG_FILE)
        checkpoint.write_json_atomic(origin, out / PROVENANCE_FILE)
    loaders = build_loaders(index, ctx.rank_data_config(), cfg.trainer.seed, ctx.device, shard=ctx.shard,
                            dtype=ctx.amp_dtype or torch.float32)
    stopper = EarlyStopping(cfg.trainer.patience)
    start_epoch, plan = _resume(ctx, stopper, out)
    patience_ended_run = False
    for epoch in range(start_epoch, cfg.trainer.epochs):
        progress = Progress(epoch, cfg.trainer.epochs, stopper.best_metric, stopper.epochs_since_best,
                            stopper.exhausted)
        new_plan = ctx.strategy.plan(progress)
        if stopper.exhausted and plan is not None and new_plan.phase == plan.phase and new_plan.early_stopping:
            patience_ended_run = True
            break
        if until_epoch is not None and epoch >= until_epoch:
            return None
        if plan is not None and new_plan.phase != plan.phase:
            stopper.new_phase()
        set_trainable(ctx, new_plan)  # and the module modes; recompiles when the set changed
        if new_plan.calibration_batches:
            norms = calibration_norms(ctx, loaders.train, new_plan, epoch)
            new_plan = with_scales(new_plan, ctx.strategy.update_scales(norms))
        refresh_optimizer(ctx, new_plan, epoch)
        plan = new_plan
        row = _run_epoch(ctx, loaders, index, plan, epoch, stopper, out)
        tracker.log(row, step=epoch)
    result = _finish(ctx, loaders, index, stopper, out, patience_ended_run, origin)
    tracker.summary(result)
    return result


def _run_epoch(ctx: RunContext, loaders, index, plan: EpochPlan, epoch: int, stopper: EarlyStopping,
               out: Path) -> dict:
    start = time.perf_counter()
    inputs = epoch_inputs(ctx, plan, loaders, index)
    cache_s = time.perf_counter() - start  # building the LP feature caches, when this epoch does
    train_stats = run_train_epoch(ctx, inputs.train, epoch, inputs.train_forward)
    start = time.perf_counter()
    with ctx.adapter.merged(ctx.model):
        val = evaluate(ctx, inputs.val, inputs.eval_forward)
    train_stats.update({"perf/feature_cache_s": cache_s, "perf/val_s": time.perf_counter() - start})
    monitored = val[ctx.cfg.trainer.monitor]
    if not math.isfinite(monitored):  # else no epoch is ever best: no best.pt, the last weights tested
        raise ValueError(f"trainer.monitor={ctx.cfg.trainer.monitor} is {monitored} on the validation split at "
                         f"epoch {epoch} (AUROC needs two classes there): monitor another metric or give the "
                         "validation split more classes")
    if not math.isfinite(train_stats["train/loss"]):
        raise FloatingPointError(f"non-finite training loss at epoch {epoch}")
    is_best = stopper.update(monitored, epoch)
    row = {"epoch": epoch, **train_stats, **{f"val/{k}": v for k, v in val.items() if k != "confusion_matrix"},
           **ctx.strategy_log(plan)}
    if ctx.is_main:
        _save_epoch(ctx, plan, epoch, stopper, row, out, is_best)
    log.info("epoch %d %s loss %.4f val %s %.4f (%.0f img/s)", epoch, plan.phase, row["train/loss"],
             ctx.cfg.trainer.monitor, monitored, row["perf/img_per_s"])
    return row


def _save_epoch(ctx: RunContext, plan: EpochPlan, epoch: int, stopper: EarlyStopping, row: dict, out: Path,
                is_best: bool) -> None:
    if is_best:
        checkpoint.save_torch_atomic(ctx.adapter.plain_state_dict(ctx.model), out / BEST_CKPT)
    # The metrics line goes first, the resume state last: a kill in between leaves a line for an
    # epoch the restart redoes (and drops the line of), never an epoch without its line.
    with (out / METRICS_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")
    checkpoint.save_torch_atomic({
        "epoch": epoch + 1, "model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
        "scaler": ctx.scaler.state_dict(), "strategy": ctx.strategy.state_dict(), "plan": asdict(plan),
        "stopper": asdict(stopper), "counters": dict(ctx.counters), "rng": checkpoint.rng_state()}, out / LAST_CKPT)


def _resume(ctx: RunContext, stopper: EarlyStopping, out: Path) -> tuple[int, EpochPlan | None]:
    """Restores the last completed epoch, if any: (next epoch, the plan it ran under)."""
    state = checkpoint.load_resume_state(out / LAST_CKPT)
    if state is None:
        if ctx.is_main:
            (out / METRICS_FILE).unlink(missing_ok=True)
        return 0, None
    epoch = state["epoch"]
    ctx.model.load_state_dict(state["model"])
    ctx.strategy.load_state_dict(state["strategy"])
    plan_fields = state["plan"]
    plan = EpochPlan(**{**plan_fields, "trainable": frozenset(plan_fields["trainable"])})
    apply_plan(ctx, plan, epoch - 1)  # as it ran: the saved plan already holds calibrated scales
    if ctx.ranks is None or ctx.ranks.zero_stage == 0:
        ctx.optimizer.load_state_dict(state["optimizer"])
    else:  # rank 0's optimizer state is one partition of ZeRO's: the others cannot use it
        log.warning("resuming %s with fresh optimizer state (ZeRO stage %d)", out.name, ctx.ranks.zero_stage)
    ctx.scaler.load_state_dict(state["scaler"])
    for key, value in state["stopper"].items():
        setattr(stopper, key, value)
    # The result's totals (images trained, train seconds) are of the whole run, not of this attempt.
    ctx.counters.update(state.get("counters", {}))
    checkpoint.set_rng_state(state["rng"])
    if ctx.is_main:
        _truncate_metrics(out / METRICS_FILE, epoch)
    log.info("resuming %s at epoch %d", out.name, epoch)
    return epoch, plan


def _truncate_metrics(path: Path, next_epoch: int) -> None:
    """Keeps the lines of the epochs before `next_epoch`; a line cut short by a kill goes too."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines()
                if (epoch := _epoch_of(line)) is not None and epoch < next_epoch]
        checkpoint.write_text_atomic("".join(line + "\n" for line in kept), path)


def _epoch_of(line: str) -> int | None:
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _finish(ctx: RunContext, loaders, index, stopper: EarlyStopping, out: Path, patience_ended_run: bool,
            origin: dict) -> dict:
    ctx.barrier()  # rank 0 has written best.pt
    if (out / BEST_CKPT).is_file():
        ctx.adapter.load_plain_state_dict_(ctx.model, torch.load(out / BEST_CKPT, map_location=ctx.device,
                                                                 weights_only=True))
    with ctx.adapter.merged(ctx.model):
        labels, probs = predict(ctx, loaders.test)
    test = prediction_metrics(labels, probs)
    result = {"cell_id": ctx.cfg.cell_id, "status": "done", "classes": ctx.classes,
              "best_epoch": stopper.best_epoch, f"best_val_{ctx.cfg.trainer.monitor}": stopper.best_metric,
              "stopped_early": patience_ended_run, "test": test, **ctx.totals(), "provenance": origin,
              # what the cell trained on: images per class and split, entries left out while indexing
              "class_counts": class_counts(index), "skipped_at_indexing": dict(index.skipped)}
    if ctx.is_main:  # predictions before result.json: a done cell always has the report's bootstrap input
        checkpoint.save_npz_atomic({"labels": labels.cpu().numpy(), "probs": probs.cpu().numpy()},
                                   out / PREDICTIONS_FILE)
        checkpoint.write_json_atomic(result, out / RESULT_FILE)
    return result
