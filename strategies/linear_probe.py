"""LP: linear probing, only the head trains; the frozen backbone runs in eval mode (spec 2).

Nothing before the head changes, so the plan allows the loop's feature cache.
"""
from __future__ import annotations

from dataclasses import dataclass

from strategies.protocol import ConstantPlan, EpochPlan, ModelLayout
from strategies.registry import register_strategy


@dataclass
class LpConfig:
    name: str = "lp"


def head_only_plan(layout: ModelLayout, phase: str = "lp") -> EpochPlan:
    """The plan of every head-only stage (LP, LP-FT phase 1, gradual unfreezing's first)."""
    return EpochPlan(phase=phase, trainable=frozenset({layout.head_block}), backbone_eval=True,
                     use_feature_cache=True)


@register_strategy("lp", LpConfig, "linear probing: frozen backbone in eval mode, only the head trains")
def create(cfg: LpConfig, layout: ModelLayout, initial_params, epochs: int) -> ConstantPlan:
    return ConstantPlan("lp", head_only_plan(layout))
