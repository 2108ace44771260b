"""FT: full fine-tuning, every parameter trains from epoch 1 at one learning rate (spec 1)."""
from __future__ import annotations

from dataclasses import dataclass

from strategies.protocol import ConstantPlan, EpochPlan, ModelLayout
from strategies.registry import register_strategy


@dataclass
class FtConfig:
    name: str = "ft"


def full_plan(layout: ModelLayout, phase: str = "ft") -> EpochPlan:
    return EpochPlan(phase=phase, trainable=frozenset(layout.blocks))


@register_strategy("ft", FtConfig, "full fine-tuning: every parameter trains at one learning rate")
def create(cfg: FtConfig, layout: ModelLayout, initial_params, epochs: int) -> ConstantPlan:
    return ConstantPlan("ft", full_plan(layout))
