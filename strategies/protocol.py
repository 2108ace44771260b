"""What the training loop asks a strategy, and the data a strategy answers with.

The loop (engine/trainer.py) asks four things: which parameters train now, at what learning
rate (the per-group scales and the schedule they follow), what extra gradient term applies, and
whether the phase changed. A strategy answers with
an `EpochPlan` and never calls the model, the optimizer or the tracker.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


@dataclass(frozen=True)
class ModelLayout:
    """What a strategy may know about the model, fixed at creation.

    Attributes:
        blocks: block name -> parameter names, input to output; the last block is `head_block`.
        modules: module name -> its direct parameter names (Auto-RGN's module granularity).
        norm_params: parameters of normalisation layers (BatchNorm etc.), found by module type.
        bias_params: parameters named `bias`.
        new_params: the freshly initialised layer that replaced the pretrained classifier (w_H of
            the SP penalties); the rest of the head block, if any, starts pretrained.
        head_block: the name of the classifier block.
    """

    blocks: Mapping[str, tuple[str, ...]]
    modules: Mapping[str, tuple[str, ...]]
    norm_params: frozenset[str]
    bias_params: frozenset[str]
    new_params: frozenset[str] = frozenset()
    head_block: str = "head"

    @property
    def backbone_blocks(self) -> list[str]:
        return [b for b in self.blocks if b != self.head_block]

    @property
    def param_names(self) -> list[str]:
        return [p for names in self.blocks.values() for p in names]


@dataclass(frozen=True)
class Progress:
    """Where the run stands when the loop asks for a plan (epochs count from 0).

    Attributes:
        epoch, total_epochs: the epoch about to run, and the budget E.
        best_metric: the best validation value so far (None before the first epoch).
        epochs_since_best: epochs of the current phase since its best value.
        patience_exhausted: the loop's patience ran out at the end of the last epoch; within a
            phase that allows early stopping the run then ends, so a strategy may use it to
            end its phase instead (LP-FT's probing phase).
    """

    epoch: int
    total_epochs: int
    best_metric: float | None = None
    epochs_since_best: int = 0
    patience_exhausted: bool = False  # the loop's patience ran out at the end of the last epoch


@dataclass(frozen=True)
class EpochPlan:
    """A strategy's answer for one epoch.

    Attributes:
        phase: a label; a change of phase resets early stopping and rebuilds the optimizer.
        trainable: block names or parameter names that train this epoch.
        lr_scales: group name (block or parameter name) -> learning-rate multiplier; missing = 1.0.
            Each key becomes one optimizer param group named after it.
        lr_factor: multiplies every group's learning rate (LP-FT's phase 2).
        weight_decay: overrides optim.weight_decay when not None (SP: 0, Auto-RGN: 1e-4).
        extra_grad: the loop calls `extra_grad_` after every backward (SP); off, it never does.
        backbone_eval: frozen blocks run in eval mode, so their BatchNorm statistics stay fixed.
        fresh_optimizer: build a new optimizer this epoch even when nothing else changed.
        calibration_batches: batches of forward/backward without a step before the epoch; their
            per-tensor gradient/weight norms go to `update_scales` (Auto-RGN).
        norms_every_k_steps: pass live gradient norms to `update_scales` every k steps (0 = never).
        use_feature_cache: nothing before the head trains, so the loop may train the head on
            cached backbone features (it checks that augmentation is off).
        early_stopping: the loop's patience may end the run in this epoch's phase; off, the
            strategy decides when the phase ends (LP-FT's fixed first phase, unfreezing stages).
        anneal: the optimizer config's schedule (optim.schedule) applies; off, every group runs at
            lr * lr_factor * lr_scale, constant (Auto-RGN: scale_i * lr).
        schedule_start, schedule_epochs: the epoch the schedule starts at (factor 1) and the epochs it
            anneals over (None: optim.t_max_epochs, else the run's E). A strategy restarts it for a
            phase (LP-FT's phase 2) by moving the start to the phase's first epoch.
    """

    phase: str
    trainable: frozenset[str]
    lr_scales: Mapping[str, float] = field(default_factory=dict)
    lr_factor: float = 1.0
    weight_decay: float | None = None
    extra_grad: bool = False
    backbone_eval: bool = False
    fresh_optimizer: bool = False
    calibration_batches: int = 0
    norms_every_k_steps: int = 0
    use_feature_cache: bool = False
    early_stopping: bool = True
    anneal: bool = True
    schedule_start: int = 0
    schedule_epochs: int | None = None


@dataclass(frozen=True)
class TensorNorms:
    """Per-tensor L2 norms, on the device, in the order of `names`; each field (n,) float32.

    Attributes:
        grad_norms: ||g_i||, averaged over the batches measured.
        weight_norms: ||w_i||.
        ratios: ||g_i|| / (||w_i|| + eps), averaged over the batches.
        mean_grad_norms: ||mean_b g_ib||, the norm of the batch-averaged gradient (calibration only).
        grad_sq_means: mean_b ||g_ib||^2 (calibration only).
    """

    names: tuple[str, ...]
    grad_norms: Tensor
    weight_norms: Tensor
    ratios: Tensor
    mean_grad_norms: Tensor | None = None
    grad_sq_means: Tensor | None = None


class Strategy(Protocol):
    """A fine-tuning strategy, as the loop (engine/trainer.py) sees it.

    The loop asks `plan` at every epoch start, then (when the plan says so) calls `update_scales`
    with measured norms and `extra_grad_` after every backward. A strategy keeps its own state
    (phase switches, measured scales) and hands it to the resume checkpoint through
    `state_dict`/`load_state_dict`; it never touches the model, the optimizer or the tracker.

    Attributes:
        name: the registered id (also the default phase label).
    """

    name: str

    def plan(self, progress: Progress) -> EpochPlan:
        """Answers, for the epoch `progress.epoch` about to run: which tensors train, their
        lr_scales, the phase, and which loop services (calibration, norms, extra gradient,
        feature cache, early stopping) the epoch uses. Called once per epoch, in order."""

    def extra_grad_(self, names: list[str], params: list[Tensor], grads: list[Tensor]) -> None:
        """Adds the strategy's gradient term in place (may do nothing)."""

    def update_scales(self, norms: TensorNorms) -> Mapping[str, float] | None:
        """New lr_scales from measured norms (None: keep the plan's)."""

    def state_dict(self) -> dict:
        """The strategy's own state, for the resume checkpoint."""

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned."""


class NoExtras:
    """The answers of a strategy with no gradient term, no measured scales and no state of its own."""

    def extra_grad_(self, names: list[str], params: list[Tensor], grads: list[Tensor]) -> None:
        pass

    def update_scales(self, norms: TensorNorms) -> Mapping[str, float] | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class ConstantPlan(NoExtras):
    """A strategy whose plan never changes (FT, LP)."""

    name: str
    fixed_plan: EpochPlan

    def plan(self, progress: Progress) -> EpochPlan:
        return self.fixed_plan
