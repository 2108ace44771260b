"""Auto-RGN (spec 8, Lee et al. 2023) and its online variant: per-tensor learning rates from the
relative gradient norm RGN_i = ||g_i|| / ||w_i||, scale_i = RGN_i / max_j RGN_j, lr_i = scale_i lr.

Reference semantics (`auto_rgn`): at every epoch start the loop runs `estimate_batches` batches
of forward/backward without a step; their per-batch ratios are averaged, max-normalised, and a
new Adam (weight decay 1e-4) is built with those rates. BatchNorm tensors are excluded from
training by module type. `auto_rgn_online` (ours) refreshes the scales every k steps from the live
gradients, smoothed, with no extra forward/backward pass.

At module granularity a module's ratio is sqrt(sum ||g_i||^2) / sqrt(sum ||w_i||^2) over its
tensors, from the batch-averaged gradient norms; all its tensors get that scale.

A layer whose weights are all zero (a zero-initialised bias) has no relative gradient norm: its
ratio would be ||g|| / eps and would dwarf every other layer's. It is left out of the maximum and
trains at the full rate. Measurements that are not finite (an fp16 overflow) are not used: the
scales stay as they were.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from strategies import register_strategy
from strategies.protocol import EpochPlan, ModelLayout, Progress, TensorNorms

log = logging.getLogger(__name__)

MIN_WEIGHT_NORM = 1e-8  # below this a layer's weights count as all zero


@dataclass
class AutoRgnConfig:
    name: str = "auto_rgn"
    granularity: Literal["tensor", "module"] = "tensor"
    exclude_bn: bool = True  # by module type, not by the substring "bn"
    estimate_batches: int = 5
    weight_decay: float = 1e-4


@dataclass
class AutoRgnOnlineConfig:
    name: str = "auto_rgn_online"
    granularity: Literal["tensor", "module"] = "tensor"
    exclude_bn: bool = True
    weight_decay: float = 1e-4
    refresh_every_steps: int = 20
    smoothing: float = 0.9  # weight of the previous ratios in the moving average


def rgn_scales(ratios: Tensor, ranked: Tensor | None = None) -> Tensor:
    """ratios / max(ratios[ranked]), at most 1; 1 where not ranked, and everywhere when the max is 0.

    Args:
        ratios: (n,) float.
        ranked: (n,) bool, the layers that take part in the maximum (default: all).
    """
    ranked = torch.ones_like(ratios, dtype=torch.bool) if ranked is None else ranked
    top = torch.where(ranked, ratios, torch.zeros_like(ratios)).max()
    scaled = (ratios / top.clamp_min(torch.finfo(ratios.dtype).tiny)).clamp_max(1.0)
    return torch.where(ranked & (top > 0), scaled, torch.ones_like(ratios))


def module_norms(grad_norms: Tensor, weight_norms: Tensor, members: Tensor,
                 num_modules: int) -> tuple[Tensor, Tensor]:
    """Per-tensor (gradient norm, weight norm) of the module each tensor belongs to
    (`members[i]` = module index of tensor i)."""
    g2 = torch.zeros(num_modules, dtype=grad_norms.dtype, device=grad_norms.device)
    w2 = torch.zeros_like(g2)
    g2.index_add_(0, members, grad_norms.square())
    w2.index_add_(0, members, weight_norms.square())
    return g2.sqrt()[members], w2.sqrt()[members]


@dataclass
class AutoRgn:
    cfg: AutoRgnConfig | AutoRgnOnlineConfig
    layout: ModelLayout
    trainable: tuple[str, ...]
    scales: dict[str, float]
    online: bool
    smoothed: Tensor | None = None
    name: str = "auto_rgn"

    def plan(self, progress: Progress) -> EpochPlan:
        return EpochPlan(phase=self.name, trainable=frozenset(self.trainable), lr_scales=dict(self.scales),
                         weight_decay=self.cfg.weight_decay, fresh_optimizer=not self.online,
                         calibration_batches=0 if self.online else self.cfg.estimate_batches,
                         norms_every_k_steps=self.cfg.refresh_every_steps if self.online else 0)

    def extra_grad_(self, names, params, grads) -> None:
        pass

    def _layer_ratios(self, norms: TensorNorms) -> tuple[Tensor, Tensor]:
        """Per tensor: the RGN of its layer, and whether that layer's weights are not all zero."""
        if self.cfg.granularity == "tensor":
            return norms.ratios.float(), norms.weight_norms > MIN_WEIGHT_NORM
        owner = {p: i for i, params in enumerate(self.layout.modules.values()) for p in params}
        members = torch.tensor([owner[n] for n in norms.names], device=norms.ratios.device)
        grad, weight = module_norms(norms.grad_norms, norms.weight_norms, members, len(self.layout.modules))
        return (grad / weight.clamp_min(MIN_WEIGHT_NORM)).float(), weight > MIN_WEIGHT_NORM

    def update_scales(self, norms: TensorNorms) -> dict[str, float] | None:
        ratios, ranked = self._layer_ratios(norms)
        # One host transfer per refresh: the optimizer's group learning rates are Python floats.
        if not bool(torch.isfinite(ratios).all()):
            log.warning("%s: non-finite gradient norms (fp16 overflow?); keeping the previous scales", self.name)
            return None
        if self.online:
            s = self.cfg.smoothing
            self.smoothed = ratios if self.smoothed is None else s * self.smoothed + (1 - s) * ratios
            ratios = self.smoothed
        self.scales = dict(zip(norms.names, rgn_scales(ratios, ranked).tolist()))
        return self.scales

    def state_dict(self) -> dict:
        return {"scales": self.scales, "smoothed": self.smoothed}

    def load_state_dict(self, state: dict) -> None:
        self.scales, self.smoothed = state["scales"], state["smoothed"]


def _create(online: bool, name: str):
    def create(cfg, layout: ModelLayout, initial_params, epochs: int) -> AutoRgn:
        steps = cfg.refresh_every_steps if online else cfg.estimate_batches
        if steps < 1:
            raise ValueError(f"strategy.{'refresh_every_steps' if online else 'estimate_batches'} must be "
                             f"at least 1, got {steps}")
        if online and not 0 <= cfg.smoothing < 1:
            raise ValueError(f"strategy.smoothing must be in [0, 1), got {cfg.smoothing}")
        excluded = layout.norm_params if cfg.exclude_bn else frozenset()
        trainable = tuple(n for n in layout.param_names if n not in excluded)
        return AutoRgn(cfg, layout, trainable, {n: 1.0 for n in trainable}, online, name=name)
    return create


register_strategy("auto_rgn", AutoRgnConfig, "per-tensor lr from relative gradient norms, re-estimated each epoch")(
    _create(False, "auto_rgn"))
register_strategy("auto_rgn_online", AutoRgnOnlineConfig,
                  "Auto-RGN with scales refreshed every k steps from live gradients, no extra passes")(
    _create(True, "auto_rgn_online"))
