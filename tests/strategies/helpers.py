"""Small builders shared by the strategy tests."""
from __future__ import annotations

from engine.models import backbone_spec, create_backbone, model_blocks, model_layout


def tiny_layout(backbone: str = "tiny_resnet", num_classes: int = 3):
    """(model, layout) of a tiny backbone with fresh weights."""
    model = create_backbone(backbone, num_classes, "none")
    return model, model_layout(model, model_blocks(model, backbone), backbone_spec(backbone).head_layer)

