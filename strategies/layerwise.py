"""Strategies beyond the study: surgical fine-tuning and layer-wise lr decay.

- `surgical` (Lee et al. 2023): one named backbone block and the head train; the rest is frozen.
- `llrd`: every block trains, block k from the output at lr * decay^k (the head at lr).

Auto-SNR (`auto_snr`) is one signal of the Auto-RGN family: strategies/auto_rgn.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from strategies.protocol import ConstantPlan, EpochPlan, ModelLayout
from strategies.registry import register_strategy


@dataclass
class SurgicalConfig:
    name: str = "surgical"
    block: str = "first"  # first | last | a block name of the backbone


@dataclass
class LlrdConfig:
    name: str = "llrd"
    decay: float = 0.75


def llrd_scales(blocks: list[str], decay: float) -> dict[str, float]:
    """Block -> decay^(distance from the last block): the last (head) gets 1."""
    return {block: decay ** (len(blocks) - 1 - i) for i, block in enumerate(blocks)}


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
