"""The Auto-RGN family: per-tensor learning rates from a measured signal, max-normalised,
scale_i = signal_i / max_j signal_j, lr_i = scale_i lr. One implementation, two signals:

- rgn (spec 8, Lee et al. 2023): the relative gradient norm RGN_i = ||g_i|| / ||w_i||.
- snr (`auto_snr`, Lee et al. 2023): the tensor-level gradient signal-to-noise ratio over the
  calibration batches, SNR_i = ||mean_b g_ib||^2 / (mean_b ||g_ib||^2 - ||mean_b g_ib||^2).

Reference semantics (`auto_rgn`): at every epoch start the loop runs `estimate_batches` batches
of forward/backward without a step; their per-batch ratios are averaged, max-normalised, and a
new Adam (weight decay 1e-4) is built with those rates, with no cosine on top: lr_i = scale_i lr
as in Lee et al.'s definition and official code (`lr_schedule="cosine"` puts the run's cosine back).
`auto_rgn_online` and `auto_snr` use the same constant rates: their scales are the schedule.
BatchNorm tensors are excluded from training by module type. `auto_rgn_online` (ours) refreshes the scales every k steps from the live
gradients, smoothed, with no extra forward/backward pass.

At module granularity a module's ratio is sqrt(sum ||g_i||^2) / sqrt(sum ||w_i||^2) over its
tensors, from the batch-averaged gradient norms; all its tensors get that scale.

A layer whose weights are all zero (a zero-initialised bias) has no relative gradient norm: its
ratio would be ||g|| / eps and would dwarf every other layer's. It is left out of the maximum and
trains at the full rate (rgn only). For either signal, measurements that are not finite (an fp16
overflow) are not used: the scales stay as they were.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from strategies.protocol import EpochPlan, ModelLayout, Progress, TensorNorms
from strategies.registry import register_strategy

log = logging.getLogger(__name__)

MIN_WEIGHT_NORM = 1e-8  # below this a layer's weights count as all zero
# constant: lr_i = scale_i * lr (the reference); cosine: times the run's cosine (optim.schedule)
LrSchedule = Literal["constant", "cosine"]


@dataclass
class AutoRgnConfig:
    name: str = "auto_rgn"
    granularity: Literal["tensor", "module"] = "tensor"
    exclude_bn: bool = True  # by module type, not by the substring "bn"
    estimate_batches: int = 5
    weight_decay: float = 1e-4
    lr_schedule: LrSchedule = "constant"


@dataclass
class AutoRgnOnlineConfig:
    name: str = "auto_rgn_online"
    granularity: Literal["tensor", "module"] = "tensor"
    exclude_bn: bool = True
    weight_decay: float = 1e-4
    refresh_every_steps: int = 20
    smoothing: float = 0.9  # weight of the previous ratios in the moving average
    lr_schedule: LrSchedule = "constant"


@dataclass
class AutoSnrConfig:
    name: str = "auto_snr"
    exclude_bn: bool = True
    estimate_batches: int = 5  # at least 2: the noise is a variance over the batches
    weight_decay: float = 1e-4
    lr_schedule: LrSchedule = "constant"


Signal = Literal["rgn", "snr"]


def snr(mean_grad_norms: Tensor, grad_sq_means: Tensor) -> Tensor:
    """Tensor-level gradient signal-to-noise ratio from batch moments (inputs (n,) float tensors)."""
    signal = mean_grad_norms.square()
    return signal / (grad_sq_means - signal).clamp_min(1e-30)


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
    """One strategy of the family: its signal, and whether it calibrates per epoch or refreshes online.

    Attributes:
        signal: "rgn" or "snr" (snr needs the calibration's batch moments, so it is never online).
        online: refresh every cfg.refresh_every_steps steps from live gradients, smoothed.
        scales: tensor name -> the latest lr scale (1.0 before the first measurement).
        smoothed: the moving average of the online ratios.
    """

    cfg: AutoRgnConfig | AutoRgnOnlineConfig | AutoSnrConfig
    layout: ModelLayout
    trainable: tuple[str, ...]
    scales: dict[str, float]
    signal: Signal = "rgn"
    online: bool = False
    smoothed: Tensor | None = None
    name: str = "auto_rgn"

    def plan(self, progress: Progress) -> EpochPlan:
        return EpochPlan(phase=self.name, trainable=frozenset(self.trainable), lr_scales=dict(self.scales),
                         weight_decay=self.cfg.weight_decay, fresh_optimizer=not self.online,
                         calibration_batches=0 if self.online else self.cfg.estimate_batches,
                         norms_every_k_steps=self.cfg.refresh_every_steps if self.online else 0,
                         anneal=self.cfg.lr_schedule == "cosine")

    def extra_grad_(self, names, params, grads) -> None:
        pass

    def _signal(self, norms: TensorNorms) -> tuple[Tensor, Tensor | None]:
        """Per tensor: the signal, and which tensors take part in the maximum (None: all)."""
        if self.signal == "snr":
            return snr(norms.mean_grad_norms, norms.grad_sq_means).float(), None
        return self._layer_ratios(norms)

    def _layer_ratios(self, norms: TensorNorms) -> tuple[Tensor, Tensor]:
        """Per tensor: the RGN of its layer, and whether that layer's weights are not all zero."""
        if self.cfg.granularity == "tensor":
            return norms.ratios.float(), norms.weight_norms > MIN_WEIGHT_NORM
        owner = {p: i for i, params in enumerate(self.layout.modules.values()) for p in params}
        members = torch.tensor([owner[n] for n in norms.names], device=norms.ratios.device)
        grad, weight = module_norms(norms.grad_norms, norms.weight_norms, members, len(self.layout.modules))
        return (grad / weight.clamp_min(MIN_WEIGHT_NORM)).float(), weight > MIN_WEIGHT_NORM

    def update_scales(self, norms: TensorNorms) -> dict[str, float] | None:
        ratios, ranked = self._signal(norms)
        # One host transfer per refresh: the optimizer's group learning rates are Python floats.
        if not bool(torch.isfinite(ratios).all()):
            log.warning("%s: non-finite %s measurement (fp16 overflow?); keeping the previous scales", self.name,
                        self.signal)
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
        # .get: an auto_snr resume state written before the family was merged has no "smoothed".
        self.scales, self.smoothed = state["scales"], state.get("smoothed")


def _trainable(cfg, layout: ModelLayout) -> tuple[str, ...]:
    """Every parameter, less the normalisation layers' (found by module type) when cfg.exclude_bn."""
    excluded = layout.norm_params if cfg.exclude_bn else frozenset()
    return tuple(n for n in layout.param_names if n not in excluded)


def _create(signal: Signal, online: bool, name: str):
    def create(cfg, layout: ModelLayout, initial_params, epochs: int) -> AutoRgn:
        field, least = ("refresh_every_steps", 1) if online else ("estimate_batches", 2 if signal == "snr" else 1)
        steps = getattr(cfg, field)
        if steps < least:
            why = " for a variance" if signal == "snr" else ""
            raise ValueError(f"strategy.{field} must be at least {least}{why}, got {steps}")
        if online and not 0 <= cfg.smoothing < 1:
            raise ValueError(f"strategy.smoothing must be in [0, 1), got {cfg.smoothing}")
        trainable = _trainable(cfg, layout)
        return AutoRgn(cfg, layout, trainable, {n: 1.0 for n in trainable}, signal, online, name=name)
    return create


register_strategy("auto_rgn", AutoRgnConfig, "per-tensor lr from relative gradient norms, re-estimated each epoch")(
    _create("rgn", False, "auto_rgn"))
register_strategy("auto_rgn_online", AutoRgnOnlineConfig,
                  "Auto-RGN with scales refreshed every k steps from live gradients, no extra passes")(
    _create("rgn", True, "auto_rgn_online"))
register_strategy("auto_snr", AutoSnrConfig, "per-tensor lr from the gradient signal-to-noise ratio, each epoch")(
    _create("snr", False, "auto_snr"))
