"""BitFit (Ben Zaken et al. 2022), beyond the study: the biases and the head train, the rest is frozen.

Every parameter named `bias` of the backbone (BatchNorm's and LayerNorm's shifts, and the biases of
the convolutions and linears that have one) trains with the whole head block; all other weights
keep their pretrained values. BatchNorm statistics: every block holds a trainable bias, so no block
is frozen whole and the loop keeps the backbone in training mode, as in FT: running means and
variances follow the target data (frozen statistics would not match the shifts being learnt).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from strategies.registry import register_strategy
from strategies.protocol import ConstantPlan, EpochPlan, ModelLayout

log = logging.getLogger(__name__)


@dataclass
class BitFitConfig:
    name: str = "bitfit"


def bitfit_trainable(layout: ModelLayout) -> frozenset[str]:
    """The backbone's bias parameters, and the head block."""
    backbone = {p for block in layout.backbone_blocks for p in layout.blocks[block]}
    return frozenset(backbone & layout.bias_params) | {layout.head_block}


@register_strategy("bitfit", BitFitConfig, "BitFit: the biases and the head train, every other weight frozen")
def create(cfg: BitFitConfig, layout: ModelLayout, initial_params, epochs: int) -> ConstantPlan:
    trainable = bitfit_trainable(layout)
    count = sum(initial_params[p].numel() for p in trainable - {layout.head_block})
    head = sum(initial_params[p].numel() for p in layout.blocks[layout.head_block])
    log.info("bitfit: %d bias and %d head parameters train, of %d", count, head,
             sum(t.numel() for t in initial_params.values()))
    return ConstantPlan("bitfit", EpochPlan(phase="bitfit", trainable=trainable))
