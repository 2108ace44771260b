"""Backbones: torchvision models with a new head, their blocks, and their features/head split.

Blocks follow docs/protocol.md ("Blocks"), derived from the module tree so that a new
backbone takes a registry entry and a few lines. `tiny_*` entries are the same architectures,
narrow, for tests and CPU demos. This module registers the study's families (ResNet, DenseNet,
VGG); engine/modern_backbones.py the newer ones; engine/weights.py reads and loads weights files.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import densenet, resnet, vgg

from engine import modern_backbones  # noqa: F401  (registers the families beyond the study)
from engine.backbone_registry import HEAD, PRE_HEAD, BackboneSpec, backbone_names, backbone_spec, register_backbone
from engine.weights import load_weights_, read_state_file
from strategies.protocol import ModelLayout

__all__ = ["HEAD", "PRE_HEAD", "BackboneSpec", "backbone_names", "backbone_spec", "block_modules",
           "create_backbone", "features_and_head", "model_blocks", "model_layout", "register_backbone"]

# --- block maps, derived from the module tree --------------------------------------------------

def _resnet_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = [("stem", [])]
    for name, _ in model.named_children():
        if name.startswith("layer"):
            blocks.append((name, [name]))
        elif name == "fc":
            blocks.append((HEAD, [name]))
        elif not blocks[1:]:
            blocks[0][1].append(name)  # everything before layer1 is the stem
    return blocks


def _densenet_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = [("stem", [])]
    for name, _ in model.features.named_children():
        if name.startswith(("denseblock", "transition")):
            blocks.append((name, [f"features.{name}"]))
        elif name == "norm5":
            blocks.append((HEAD, ["features.norm5", "classifier"]))
        else:
            blocks[0][1].append(f"features.{name}")
    return blocks


def _vgg_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] = []
    for name, module in model.features.named_children():
        current.append(f"features.{name}")
        if isinstance(module, nn.MaxPool2d):  # each conv block ends at its max-pool
            blocks.append((f"block{len(blocks) + 1}", current))
            current = []
    return blocks + [(HEAD, ["classifier"])]


# --- features/head splits (the LP feature cache trains the head on features(x)) ----------------

def _resnet_split(model, head_scope):
    features = nn.Sequential(*[m for n, m in model.named_children() if n != "fc"], nn.Flatten(1))
    return features, model.fc


def _densenet_split(model, head_scope):
    tail = [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]  # DenseNet.forward's functional tail
    if head_scope == "last_layer":
        return nn.Sequential(model.features, *tail), model.classifier
    return nn.Sequential(*model.features[:-1]), nn.Sequential(model.features.norm5, *tail, model.classifier)


def _vgg_split(model, head_scope):
    features = [model.features, model.avgpool, nn.Flatten(1)]
    if head_scope == "last_layer":
        return nn.Sequential(*features, *model.classifier[:-1]), model.classifier[-1]
    return nn.Sequential(*features), model.classifier


def _tiny_resnet(num_classes: int) -> nn.Module:
    return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=num_classes, width_per_group=16)


def _tiny_densenet(num_classes: int) -> nn.Module:
    return densenet.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                             num_classes=num_classes)


def _tiny_vgg(num_classes: int) -> nn.Module:
    layers = vgg.make_layers([8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"], batch_norm=False)
    model = vgg.VGG(layers, num_classes=num_classes, init_weights=True)
    # Same classifier structure (three linears), narrow so it fits a CPU test.
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier = nn.Sequential(nn.Linear(32 * 4, 64), nn.ReLU(True), nn.Dropout(0.5),
                                     nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(0.5),
                                     nn.Linear(64, num_classes))
    return model


register_backbone("resnet50", BackboneSpec(torchvision.models.resnet50, "fc", _resnet_blocks, _resnet_split,
                                           resnet.ResNet50_Weights.IMAGENET1K_V2))
register_backbone("densenet121", BackboneSpec(torchvision.models.densenet121, "classifier", _densenet_blocks,
                                              _densenet_split, densenet.DenseNet121_Weights.IMAGENET1K_V1))
register_backbone("vgg19", BackboneSpec(torchvision.models.vgg19, "classifier.6", _vgg_blocks, _vgg_split,
                                        vgg.VGG19_Weights.IMAGENET1K_V1))
register_backbone("vgg19_bn", BackboneSpec(torchvision.models.vgg19_bn, "classifier.6", _vgg_blocks,
                                           _vgg_split, vgg.VGG19_BN_Weights.IMAGENET1K_V1))
register_backbone("resnet18", BackboneSpec(torchvision.models.resnet18, "fc", _resnet_blocks, _resnet_split,
                                           resnet.ResNet18_Weights.IMAGENET1K_V1))
register_backbone("resnet101", BackboneSpec(torchvision.models.resnet101, "fc", _resnet_blocks, _resnet_split,
                                            resnet.ResNet101_Weights.IMAGENET1K_V2))
register_backbone("densenet169", BackboneSpec(torchvision.models.densenet169, "classifier", _densenet_blocks,
                                              _densenet_split, densenet.DenseNet169_Weights.IMAGENET1K_V1))
register_backbone("tiny_resnet", BackboneSpec(_tiny_resnet, "fc", _resnet_blocks, _resnet_split))
register_backbone("tiny_densenet", BackboneSpec(_tiny_densenet, "classifier", _densenet_blocks, _densenet_split))
register_backbone("tiny_vgg", BackboneSpec(_tiny_vgg, "classifier.6", _vgg_blocks, _vgg_split))


# --- construction ------------------------------------------------------------------------------

def _pretrained_state(name: str, spec: BackboneSpec, weights: str) -> dict | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        if spec.weights is None:
            raise ValueError(f"model.weights: backbone '{name}' has no ImageNet weights; use 'none' or a file")
        try:
            return spec.weights.get_state_dict(progress=False)
        except Exception as e:  # network, proxy, disk: all end in the same advice
            raise RuntimeError(
                f"could not fetch the ImageNet weights of '{name}' ({spec.weights.url}): {e}. Download that "
                f"file elsewhere and pass it as model.weights=/path/to/file.pth (or into "
                f"{torch.hub.get_dir()}/checkpoints), or use model.weights=none") from e
    return read_state_file(Path(weights).expanduser())


def _replace_head(model: nn.Module, head_layer: str, num_classes: int) -> None:
    parent_name, _, leaf = head_layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, leaf)
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes))


def create_backbone(name: str, num_classes: int, weights: str = "imagenet",
                    weights_prefix: str | None = None) -> nn.Module:
    """Builds backbone `name` with pretrained `weights` and a fresh head for `num_classes`.

    Args:
        weights: 'imagenet' (torchvision Weights), 'none', or a path to a state_dict file.
        weights_prefix: the prefix a file's keys carry ('module.'); None finds it (engine/weights.py).

    Raises:
        ValueError: unknown backbone, a weights file whose keys match none of the model's.
        FileNotFoundError: a weights path that does not exist.
        RuntimeError: ImageNet weights that cannot be fetched (the message says how to pass a file).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    spec = backbone_spec(name)
    state = _pretrained_state(name, spec, weights)
    if state is None:
        return spec.build(num_classes=num_classes)
    model = spec.build(num_classes=1000)
    prefix = "" if weights == "imagenet" else weights_prefix
    load_weights_(model, state, prefix, spec.head_layer + ".", f"'{weights}' for {name}")
    _replace_head(model, spec.head_layer, num_classes)
    return model


def _block_entries(model: nn.Module, name: str, head_scope: str) -> OrderedDict[str, list[str]]:
    """Block name -> module or parameter names, input to output, with the head cut to `head_scope`."""
    spec = backbone_spec(name)
    groups = OrderedDict(spec.block_modules(model))
    if head_scope == "last_layer":
        pre_head = []
        for module in groups.pop(HEAD):
            if spec.head_layer.startswith(module + "."):  # a container of the head layer: split it
                pre_head += [f"{module}.{c}" for c, _ in model.get_submodule(module).named_children()
                             if f"{module}.{c}" != spec.head_layer]
            elif module != spec.head_layer:
                pre_head.append(module)
        groups[PRE_HEAD] = pre_head
        groups[HEAD] = [spec.head_layer]
    return groups


def _is_module(model: nn.Module, entry: str) -> bool:
    try:
        model.get_submodule(entry)
    except AttributeError:
        return False
    return True


def block_modules(model: nn.Module, name: str, head_scope: str = "block") -> OrderedDict[str, list[str]]:
    """Block name -> module names, input to output (the loop sets frozen blocks to eval mode by these).

    With head_scope 'last_layer' only the replaced layer is the head; the rest of the spec's head
    block (VGG's first two classifier linears, DenseNet's norm5) becomes block 'pre_head'.
    """
    return OrderedDict((block, [e for e in entries if _is_module(model, e)])
                       for block, entries in _block_entries(model, name, head_scope).items())


def model_blocks(model: nn.Module, name: str, head_scope: str = "block") -> OrderedDict[str, list[str]]:
    """Block name -> parameter names, input to output; every parameter in exactly one block."""
    def params(entry: str) -> list[str]:
        if not _is_module(model, entry):
            model.get_parameter(entry)  # raises for a name that is neither
            return [entry]
        return [f"{entry}.{p}" for p, _ in model.get_submodule(entry).named_parameters()]
    blocks = OrderedDict((block, [p for e in entries for p in params(e)])
                         for block, entries in _block_entries(model, name, head_scope).items())
    placed = [p for ps in blocks.values() for p in ps]
    if sorted(placed) != sorted(n for n, _ in model.named_parameters()):
        raise AssertionError(f"blocks of {name} do not cover each parameter exactly once")
    return OrderedDict((b, ps) for b, ps in blocks.items() if ps)


def features_and_head(model: nn.Module, name: str, head_scope: str = "block") -> tuple[nn.Module, nn.Module]:
    """Modules (sharing the model's weights) with head(features(x)) == model(x)."""
    return backbone_spec(name).split(model, head_scope)


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def model_layout(model: nn.Module, blocks: OrderedDict[str, list[str]], head_layer: str) -> ModelLayout:
    """What a strategy may know of the model: blocks, modules, norm, bias and new-head parameters.

    Args:
        head_layer: the replaced classifier layer (`BackboneSpec.head_layer`).
    """
    modules, norm = {}, set()
    for mname, module in model.named_modules():
        direct = tuple(f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False))
        if direct:
            modules[mname] = direct
            if isinstance(module, _NORM_TYPES):  # by type: ResNet's downsample.1 is a BatchNorm too
                norm.update(direct)
    bias = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
    new = {f"{head_layer}.{p}" for p, _ in model.get_submodule(head_layer).named_parameters()}
    return ModelLayout(blocks={b: tuple(p) for b, p in blocks.items()}, modules=modules,
                       norm_params=frozenset(norm), bias_params=frozenset(bias), new_params=frozenset(new),
                       head_block=HEAD)
