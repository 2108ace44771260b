"""Block maps and features/head splits of the backbones beyond the study (engine/modern_backbones.py)."""
import pytest
import torch
from torch import nn

from engine.models import (HEAD, backbone_spec, block_modules, create_backbone, features_and_head, model_blocks,
                           model_layout)

FULL = {  # backbone -> its blocks, input to output
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", HEAD],
    "resnet101": ["stem", "layer1", "layer2", "layer3", "layer4", HEAD],
    "densenet169": ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
                    "transition3", "denseblock4", HEAD],
    "efficientnet_b0": ["stem", *[f"stage{i}" for i in range(1, 8)], "top", HEAD],
    "convnext_tiny": ["stem", "stage1", "stage2", "stage3", "stage4", HEAD],
    "vit_b_16": ["stem", *[f"layer{i}" for i in range(1, 13)], HEAD],
    "swin_t": ["stem", "stage1", "stage2", "stage3", "stage4", HEAD],
}
NARROW = {"tiny_efficientnet": 3, "tiny_convnext": 4, "tiny_vit": 2, "tiny_swin": 4}  # stages / layers
HEAD_MODULES = {"efficientnet": ["classifier"], "convnext": ["classifier"], "vit": ["encoder.ln", "heads"],
                "swin": ["norm", "head"], "resnet": ["fc"], "densenet": ["features.norm5", "classifier"]}


def _family(name: str) -> str:
    return next(f for f in HEAD_MODULES if f in name)


def _check_partition(model: nn.Module, name: str, head_scope: str = "block") -> None:
    """Every parameter in exactly one block, blocks in module-tree order, the head ends in the replaced layer."""
    blocks = model_blocks(model, name, head_scope)
    placed = [p for ps in blocks.values() for p in ps]
    assert len(placed) == len(set(placed)) and set(placed) == {n for n, _ in model.named_parameters()}
    order = [n for n, _ in model.named_parameters()]  # registration order: input to output in torchvision
    firsts = [min(order.index(p) for p in ps) for ps in blocks.values()]
    assert firsts == sorted(firsts)
    head_layer = backbone_spec(name).head_layer
    assert list(blocks)[-1] == HEAD and {f"{head_layer}.weight", f"{head_layer}.bias"} <= set(blocks[HEAD])
    assert isinstance(model.get_submodule(head_layer), nn.Linear)


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_block_map_partitions_parameters_in_order(name):
    # The module tree alone decides the map: built on the meta device, without memory or init cost.
    with torch.device("meta"):
        model = create_backbone(name, 5, "none")
    assert list(model_blocks(model, name)) == FULL[name]
    _check_partition(model, name)
    _check_partition(model, name, "last_layer")
    assert model.get_submodule(backbone_spec(name).head_layer).out_features == 5
    assert list(block_modules(model, name)[HEAD]) == HEAD_MODULES[_family(name)]


@pytest.mark.parametrize("name", list(NARROW))
@pytest.mark.parametrize("head_scope", ["block", "last_layer"])
def test_narrow_block_map_partitions_parameters_in_forward_order(name, head_scope):
    model = create_backbone(name, 3, "none").eval()
    _check_partition(model, name, head_scope)
    blocks = block_modules(model, name, head_scope)
    assert len([b for b in blocks if b.startswith(("stage", "layer"))]) == NARROW[name]
    calls = []  # the order in which the forward pass reaches each block's modules
    for index, modules in enumerate(blocks.values()):
        for module in modules:
            model.get_submodule(module).register_forward_pre_hook(lambda *_, i=index: calls.append(i))
    model(torch.randn(1, 3, 32, 32))
    assert calls == sorted(calls) and set(calls) == {i for i, ms in enumerate(blocks.values()) if ms}


@pytest.mark.parametrize("name", list(NARROW))
@pytest.mark.parametrize("head_scope", ["block", "last_layer"])
def test_features_then_head_equals_the_model(name, head_scope):
    model = create_backbone(name, 3, "none").eval()
    features, head = features_and_head(model, name, head_scope)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(head(features(x)), model(x))  # the model's own ops in the same order
    head_ids = {id(p) for p in head.parameters()}
    params = dict(model.named_parameters())
    assert {id(params[n]) for n in model_blocks(model, name, head_scope)[HEAD]} <= head_ids
    assert head_ids.isdisjoint(id(p) for p in features.parameters())  # the cache key sees no head weight


def test_vit_class_token_and_position_embedding_are_stem_parameters():
    model = create_backbone("tiny_vit", 3, "none")
    blocks = model_blocks(model, "tiny_vit")
    assert {"class_token", "encoder.pos_embedding", "conv_proj.weight"} <= set(blocks["stem"])
    assert "class_token" not in block_modules(model, "tiny_vit")["stem"]  # not a module to set to eval


@pytest.mark.parametrize("name", ["tiny_convnext", "tiny_vit", "tiny_swin"])
def test_layernorm_networks_have_their_norms_found_by_type(name):
    model = create_backbone(name, 3, "none")
    layout = model_layout(model, model_blocks(model, name), backbone_spec(name).head_layer)
    expected = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
                for p, _ in mod.named_parameters(recurse=False)}
    assert expected and layout.norm_params == expected
