"""G-LF and G-FL (spec 3, 4): gradual unfreezing, one backbone block more every T epochs.

The head always trains. With K backbone blocks the run trains head-only for T epochs, then
unfreezes one block more every T epochs, from the output side (G-LF, ULMFiT) or the input side
(G-FL), cumulatively. Default T = max(1, E // (K + 1)). Frozen blocks run in eval mode.
By default each stage is a phase and early stopping waits until every block trains, so that
patience cannot turn the schedule into linear probing; it then counts from the last unfreeze.
With `early_stop_in_stages` the run is one phase whose patience counts across the stages. Either
way the best-validation weights of the whole run are tested.

The learning rate follows one cosine over the whole run by default (`lr_schedule="run"`), as the
other one-phase strategies do: a block unfrozen late trains at the low end of it (G-LF's stem, G-FL's
last stage), which is part of what the study compares. `lr_schedule="stage"` restarts the cosine
at every unfreeze over that stage's epochs (the last stage: to the end of the run).
A T with K T >= E never reaches the last stage: not every block trains, and early stopping (which
waits for it) never applies; the strategy says so in a warning at creation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from strategies.protocol import EpochPlan, ModelLayout, NoExtras, Progress
from strategies.registry import register_strategy

log = logging.getLogger(__name__)


@dataclass
class GradualConfig:
    name: str = "g_lf"
    period_epochs: int | None = None  # T; None = max(1, E // (K + 1))
    early_stop_in_stages: bool = False  # one phase: patience may end the run before every block trains
    lr_schedule: Literal["run", "stage"] = "run"  # one cosine over E, or one per stage from its unfreeze


def unfreeze_schedule(num_blocks: int, epochs: int, period_epochs: int,
                      direction: Literal["last_first", "first_last"]) -> list[frozenset[int]]:
    """The backbone block indices (0 = input side) that train in each epoch."""
    schedule = []
    for epoch in range(epochs):
        unfrozen = min(num_blocks, epoch // period_epochs)
        first = num_blocks - unfrozen if direction == "last_first" else 0
        schedule.append(frozenset(range(first, first + unfrozen)))
    return schedule


def stage_schedule(stage: int, num_blocks: int, period_epochs: int, epochs: int) -> tuple[int, int]:
    """(first epoch, epochs) of the cosine of the stage with `stage` blocks unfrozen; the last stage
    runs to the end of the run."""
    start = stage * period_epochs
    return start, (period_epochs if stage < num_blocks else max(1, epochs - start))


@dataclass
class GradualUnfreeze(NoExtras):
    layout: ModelLayout
    schedule: list[frozenset[int]]
    name: str
    early_stop_in_stages: bool = False
    stage_lr: tuple[int, int] | None = None  # (T, E) when each stage restarts the cosine, else None

    def plan(self, progress: Progress) -> EpochPlan:
        indices = self.schedule[min(progress.epoch, len(self.schedule) - 1)]
        backbone = self.layout.backbone_blocks
        trainable = frozenset(backbone[i] for i in indices) | {self.layout.head_block}
        start, length = stage_schedule(len(indices), len(backbone), *self.stage_lr) if self.stage_lr else (0, None)
        if self.early_stop_in_stages:
            return EpochPlan(phase=self.name, trainable=trainable, backbone_eval=True, use_feature_cache=not indices,
                             schedule_start=start, schedule_epochs=length)
        return EpochPlan(phase=f"{self.name}/{len(indices)}", trainable=trainable, backbone_eval=True,
                         use_feature_cache=not indices, early_stopping=len(indices) == len(backbone),
                         schedule_start=start, schedule_epochs=length)


def _create(direction: str, name: str):
    def create(cfg: GradualConfig, layout: ModelLayout, initial_params, epochs: int) -> GradualUnfreeze:
        blocks = len(layout.backbone_blocks)
        period = max(1, epochs // (blocks + 1)) if cfg.period_epochs is None else cfg.period_epochs
        if period < 1:
            raise ValueError(f"strategy.period_epochs must be at least 1, got {period}")
        never = blocks - (epochs - 1) // period
        if never > 0:
            log.warning("%s: K * T = %d x %d >= trainer.epochs=%d: %d block(s) never unfreeze%s", name, blocks,
                        period, epochs, never, "" if cfg.early_stop_in_stages else " and early stopping never applies")
        return GradualUnfreeze(layout, unfreeze_schedule(blocks, epochs, period, direction), name,
                               cfg.early_stop_in_stages, (period, epochs) if cfg.lr_schedule == "stage" else None)
    return create


register_strategy("g_lf", GradualConfig, "gradual unfreezing, last block to first, one more every T epochs")(
    _create("last_first", "g_lf"))
register_strategy("g_fl", GradualConfig, "gradual unfreezing, first block to last, one more every T epochs")(
    _create("first_last", "g_fl"))
