"""L1-SP and L2-SP (spec 6, 7): fine-tuning pulled towards the pretrained starting point.

The penalties alpha/2 ||w_S - w_S0||^2 (L2) or alpha ||w_S - w_S0||_1 (L1), plus beta/2 ||w_H||^2
on the head, are applied as their gradients, g += alpha (w - w0) or alpha sign(w - w0), and
g += beta w, in one fused pass over all tensors (kernels/sp_grad.py), never as a loss built in a
Python loop. The optimizer's own weight decay is 0.

Default strength: under Adam a step is the gradient over its own RMS, so a penalty gradient above
a tensor's CE gradient decides that tensor's step alone. alpha sign(w - w0) has RMS alpha whatever
the distance, so alpha must stay below the CE-gradient RMS of the tensors it regularises; on busi
(tiny_resnet, 64 px, bench/sp_ratio.py) alpha = 0.01 was above it for 42 of 51 tensors (99.5 % of
the weights), 1e-4 below it for every tensor (largest ratio 0.3): L1-SP defaults to 1e-4. The L2
gradient alpha (w - w0) grows from 0 with the distance, so L2-SP keeps the spec's 0.01.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from torch import Tensor

from strategies.full_ft import full_plan
from strategies.protocol import EpochPlan, ModelLayout, NoExtras, Progress
from strategies.registry import register_strategy


DEFAULT_ALPHA = {"l1": 1e-4, "l2": 0.01}  # the module docstring says why L1's is lower


@dataclass
class SpConfig:
    name: str = "l2_sp"
    alpha: float | None = None  # None: DEFAULT_ALPHA of the penalty's norm
    beta: float = 0.01
    exclude_bn_and_bias: bool = False  # leave BatchNorm tensors and biases unpenalised


@dataclass
class StartingPointRegularized(NoExtras):
    cfg: SpConfig
    norm: Literal["l1", "l2"]
    anchors: dict[str, Tensor | None]  # penalised tensor -> w0 (None for the head: beta * w)
    fixed_plan: EpochPlan
    name: str = "l2_sp"
    _selection: tuple = field(default=(None, [], []), repr=False)

    def plan(self, progress: Progress) -> EpochPlan:
        return self.fixed_plan

    def _select(self, names: list[str]) -> tuple[list[int], list[Tensor | None]]:
        # The trainable list changes only with the plan: filter it once, not every step.
        if self._selection[0] is not names:
            picked = [i for i, n in enumerate(names) if n in self.anchors]
            self._selection = (names, picked, [self.anchors[names[i]] for i in picked])
        return self._selection[1], self._selection[2]

    def extra_grad_(self, names: list[str], params: list[Tensor], grads: list[Tensor]) -> None:
        from kernels.sp_grad import add_sp_grad_

        picked, anchors = self._select(names)
        add_sp_grad_([grads[i] for i in picked], [params[i].detach() for i in picked], anchors,
                     self.cfg.alpha, self.cfg.beta, self.norm)


def _create(norm: str, name: str):
    def create(cfg: SpConfig, layout: ModelLayout, initial_params, epochs: int) -> StartingPointRegularized:
        cfg = replace(cfg, alpha=DEFAULT_ALPHA[norm] if cfg.alpha is None else cfg.alpha)
        for key in ("alpha", "beta"):
            if getattr(cfg, key) < 0:
                raise ValueError(f"strategy.{key} must be non-negative, got {getattr(cfg, key)}")
        # w_H is the freshly initialised classifier only: the rest of a head block (VGG's first
        # two classifier linears, DenseNet's norm5) starts pretrained and is anchored like w_S.
        head = layout.new_params
        skipped = layout.norm_params | layout.bias_params if cfg.exclude_bn_and_bias else frozenset()
        anchors = {n: None if n in head else initial_params[n].detach().clone()
                   for n in layout.param_names if n in head or n not in skipped}
        plan = replace(full_plan(layout, name), weight_decay=0.0, extra_grad=True)
        return StartingPointRegularized(cfg, norm, anchors, plan, name)
    return create


register_strategy("l1_sp", SpConfig, "fine-tuning + alpha*sign(w-w0) on the backbone, beta*w on the head")(
    _create("l1", "l1_sp"))
register_strategy("l2_sp", SpConfig, "fine-tuning + alpha*(w-w0) on the backbone, beta*w on the head")(
    _create("l2", "l2_sp"))
