"""The backbone registry: how each backbone is built, cut into blocks, and split into features/head.

`engine/models.py` registers the study's families, `engine/modern_backbones.py` the newer ones;
both derive their blocks from the module tree (docs/protocol.md, "Blocks").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

HEAD = "head"
PRE_HEAD = "pre_head"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and cut it.

    Attributes:
        build: constructor taking `num_classes` of the ImageNet head (weights loaded separately).
        head_layer: the dotted name of the classifier layer that is replaced for the target classes.
        block_modules: model -> [(block name, [module or parameter names])], input to output, head
            block last. A parameter name places a parameter held directly by a container (ViT's
            class token and position embedding).
        split: (model, head_scope) -> (features, head) modules, with head(features(x)) == model(x).
        weights: the torchvision Weights enum member for `weights: imagenet`, or None.
    """

    build: Callable[[int], nn.Module]
    head_layer: str
    block_modules: Callable[[nn.Module], list[tuple[str, list[str]]]]
    split: Callable[[nn.Module, str], tuple[nn.Module, nn.Module]]
    weights: object = None


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, spec: BackboneSpec) -> None:
    _BACKBONES[name] = spec


def backbone_spec(name: str) -> BackboneSpec:
    if name not in _BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone '{name}' (known: {', '.join(sorted(_BACKBONES))})")
    return _BACKBONES[name]


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)
