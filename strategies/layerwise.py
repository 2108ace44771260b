"""Strategies beyond the study: surgical fine-tuning, layer-wise lr decay, and Auto-SNR.

- `surgical` (Lee et al. 2023): one named backbone block and the head train; the rest is frozen.
- `llrd`: every block trains, block k from the output at lr * decay^k (the head at lr).
- `auto_snr` (Lee et al. 2023): per-tensor lr from the gradient signal-to-noise ratio over the
  calibration batches, SNR_i = ||mean_b g_ib||^2 / (mean_b ||g_ib||^2 - ||mean_b g_ib||^2),
  max-normalised and re-estimated every epoch like Auto-RGN (tensor-level, not per element).
"""
from __future__ import annotations

from dataclasses import dataclass

from strategies import register_strategy
from strategies.auto_rgn import rgn_scales
from strategies.protocol import ConstantPlan, EpochPlan, ModelLayout, NoExtras, Progress, TensorNorms


@dataclass
class SurgicalConfig:
    name: str = "surgical"
    block: str = "first"  # first | last | a block name of the backbone


@dataclass
class LlrdConfig:
    name: str = "llrd"
    decay: float = 0.75


@dataclass
class AutoSnrConfig:
    name: str = "auto_snr"
    exclude_bn: bool = True
    estimate_batches: int = 5
    weight_decay: float = 1e-4


def llrd_scales(blocks: list[str], decay: float) -> dict[str, float]:
    """Block -> decay^(distance from the last block): the last (head) gets 1."""
    return {block: decay ** (len(blocks) - 1 - i) for i, block in enumerate(blocks)}


def snr(mean_grad_norms, grad_sq_means):
    """Tensor-level gradient signal-to-noise ratio from batch moments (inputs (n,) float tensors)."""
    signal = mean_grad_norms.square()
    return signal / (grad_sq_means - signal).clamp_min(1e-30)


@dataclass
class AutoSnr(NoExtras):
    cfg: AutoSnrConfig
    trainable: tuple[str, ...]
    scales: dict[str, float]
    name: str = "auto_snr"

    def plan(self, progress: Progress) -> EpochPlan:
        return EpochPlan(phase=self.name, trainable=frozenset(self.trainable), lr_scales=dict(self.scales),
                         weight_decay=self.cfg.weight_decay, fresh_optimizer=True,
                         calibration_batches=self.cfg.estimate_batches)

    def update_scales(self, norms: TensorNorms) -> dict[str, float]:
        self.scales = dict(zip(norms.names, rgn_scales(snr(norms.mean_grad_norms, norms.grad_sq_means)).tolist()))
        return self.scales

    def state_dict(self) -> dict:
        return {"scales": self.scales}

    def load_state_dict(self, state: dict) -> None:
        self.scales = state["scales"]


@register_strategy("surgical", SurgicalConfig, "one named backbone block and the head train; the rest is frozen")
def create_surgical(cfg: SurgicalConfig, layout: ModelLayout, initial_params, epochs: int) -> ConstantPlan:
    backbone = layout.backbone_blocks
    block = {"first": backbone[0], "last": backbone[-1]}.get(cfg.block, cfg.block)
    if block not in backbone:
        raise ValueError(f"strategy.block: '{cfg.block}' is not a backbone block (blocks: first, last, "
                         f"{', '.join(backbone)})")
    return ConstantPlan("surgical", EpochPlan(phase="surgical", trainable=frozenset({block, layout.head_block}),
                                              backbone_eval=True))


@register_strategy("llrd", LlrdConfig, "every block trains, block k from the output at lr * decay^k")
def create_llrd(cfg: LlrdConfig, layout: ModelLayout, initial_params, epochs: int) -> ConstantPlan:
    if not 0 < cfg.decay <= 1:
        raise ValueError(f"strategy.decay must be in (0, 1], got {cfg.decay}")
    return ConstantPlan("llrd", EpochPlan(phase="llrd", trainable=frozenset(layout.blocks),
                                          lr_scales=llrd_scales(list(layout.blocks), cfg.decay)))


@register_strategy("auto_snr", AutoSnrConfig, "per-tensor lr from the gradient signal-to-noise ratio, each epoch")
def create_auto_snr(cfg: AutoSnrConfig, layout: ModelLayout, initial_params, epochs: int) -> AutoSnr:
    if cfg.estimate_batches < 2:
        raise ValueError(f"strategy.estimate_batches must be at least 2 for a variance, got {cfg.estimate_batches}")
    excluded = layout.norm_params if cfg.exclude_bn else frozenset()
    trainable = tuple(n for n in layout.param_names if n not in excluded)
    return AutoSnr(cfg, trainable, {n: 1.0 for n in trainable})
