"""LP-FT (spec 5): linear probing, then full fine-tuning from the probed head at a lower rate.

Phase 1 trains the head alone (backbone frozen, in eval mode) for `lp_epochs` epochs, or until
its early stopping fires; phase 2 trains everything with a new optimizer at lr * ft_lr_factor.
The head of phase 1 is carried over because the loop keeps the model across the phase change.
Each phase has its own schedule, restarted at its first epoch: phase 1 anneals over `lp_epochs`,
phase 2 over the epochs left at the switch, so phase 2 starts at lr * ft_lr_factor however early
phase 1 stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from strategies.full_ft import full_plan
from strategies.linear_probe import head_only_plan
from strategies.protocol import EpochPlan, ModelLayout, NoExtras, Progress
from strategies.registry import register_strategy


@dataclass
class LpFtConfig:
    name: str = "lp_ft"
    lp_epochs: int | None = None  # E1; None = E // 2
    ft_lr_factor: float = 0.1
    lp_early_stopping: bool = True  # phase 1 also ends when its early stopping fires


def lp_ft_phase(progress: Progress, lp_epochs: int, lp_early_stopping: bool, switched: bool) -> str:
    """'lp' or 'ft' for the epoch about to run; once 'ft', always 'ft'."""
    if switched or progress.epoch >= lp_epochs or (lp_early_stopping and progress.patience_exhausted):
        return "ft"
    return "lp"


@dataclass
class LpFt(NoExtras):
    cfg: LpFtConfig
    layout: ModelLayout
    lp_epochs: int
    epochs: int
    switch_epoch: int | None = None
    name: str = "lp_ft"

    def plan(self, progress: Progress) -> EpochPlan:
        phase = lp_ft_phase(progress, self.lp_epochs, self.cfg.lp_early_stopping, self.switch_epoch is not None)
        if phase == "lp":
            return replace(head_only_plan(self.layout, "lp"), early_stopping=self.cfg.lp_early_stopping,
                           schedule_epochs=self.lp_epochs)
        if self.switch_epoch is None:
            self.switch_epoch = progress.epoch
        # A new phase: the loop builds the new optimizer once, at the switch.
        return replace(full_plan(self.layout, "ft"), lr_factor=self.cfg.ft_lr_factor,
                       schedule_start=self.switch_epoch, schedule_epochs=self.epochs - self.switch_epoch)

    def state_dict(self) -> dict:
        return {"switch_epoch": self.switch_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.switch_epoch = state["switch_epoch"]


@register_strategy("lp_ft", LpFtConfig,
                   "linear probing, then full fine-tuning from the probed head at lr x 0.1, each phase its own cosine")
def create(cfg: LpFtConfig, layout: ModelLayout, initial_params, epochs: int) -> LpFt:
    lp_epochs = epochs // 2 if cfg.lp_epochs is None else cfg.lp_epochs
    if not 1 <= lp_epochs < epochs:
        raise ValueError(f"strategy.lp_epochs={lp_epochs} must be at least 1 and below trainer.epochs={epochs}, "
                         "so that both phases run")
    if cfg.ft_lr_factor <= 0:
        raise ValueError(f"strategy.ft_lr_factor must be positive, got {cfg.ft_lr_factor}")
    return LpFt(cfg, layout, lp_epochs, epochs)
