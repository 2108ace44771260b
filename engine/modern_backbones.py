"""The backbones beyond the study: EfficientNet, ConvNeXt, ViT and Swin from torchvision.

Blocks are derived from the module tree, input to output. The staged families (EfficientNet,
ConvNeXt, Swin) keep their stages in `features`: its first child is the stem, each child made of
the family's repeated block (MBConv, CNBlock, SwinTransformerBlock) closes a stage, and what lies
between two stages (ConvNeXt's and Swin's downsampling layers) opens the next one; what follows the
last stage (EfficientNet's 1x1 convolution) is block `top`. ViT's blocks are its stem (patch
projection, class token, position embedding), each encoder layer, and the head.

The head block holds the replaced classifier layer and, as DenseNet's norm5 in the spec, the
normalisation right before it: ConvNeXt's classifier LayerNorm, ViT's `encoder.ln`, Swin's
`norm`. So LP (head_scope block) trains that final norm too; `model.head_scope: last_layer`
trains the classifier layer alone.

`tiny_*` entries are the same torchvision classes, narrow, for CPU tests (32 px input; tiny_vit
takes 32 px only, as a ViT's position embedding fixes its input size).
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models import convnext, efficientnet, swin_transformer, vision_transformer

from engine.backbone_registry import HEAD, BackboneSpec, register_backbone


def _staged_blocks(stage_types: tuple[type, ...], head: list[str]):
    """A block map for a model whose `features` is stem, stages and the layers between them."""
    def blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
        children = list(model.features.named_children())
        out: list[tuple[str, list[str]]] = [("stem", [f"features.{children[0][0]}"])]
        pending: list[str] = []
        for name, child in children[1:]:
            pending.append(f"features.{name}")
            first = next(iter(child.children()), None)
            if isinstance(first, stage_types):
                out.append((f"stage{len(out)}", pending))
                pending = []
        if pending:
            out.append(("top", pending))
        return out + [(HEAD, head)]
    return blocks


def _convnext_split(model, head_scope):
    if head_scope == "last_layer":
        return nn.Sequential(model.features, model.avgpool, *model.classifier[:-1]), model.classifier[-1]
    return nn.Sequential(model.features, model.avgpool), model.classifier


def _efficientnet_split(model, head_scope):
    features = [model.features, model.avgpool, nn.Flatten(1)]  # EfficientNet.forward's torch.flatten
    if head_scope == "last_layer":
        return nn.Sequential(*features, *model.classifier[:-1]), model.classifier[-1]
    return nn.Sequential(*features), model.classifier


def _swin_split(model, head_scope):
    pooled = [model.norm, model.permute, model.avgpool, model.flatten]
    if head_scope == "last_layer":
        return nn.Sequential(model.features, *pooled), model.head
    return model.features, nn.Sequential(*pooled, model.head)


def _vit_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    stem = ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"]
    layers = [(f"layer{i + 1}", [f"encoder.layers.{name}"])
              for i, (name, _) in enumerate(model.encoder.layers.named_children())]
    return [("stem", stem), *layers, (HEAD, ["encoder.ln", "heads"])]


class VitClassToken(nn.Module):
    """ViT up to its encoder layers (and the final norm, when given), at the class token: (N, D).

    The final LayerNorm acts on each token alone, so norm(x)[:, 0] == norm(x[:, 0]): the cache keeps
    one token per image instead of the whole sequence. Holds the model's own modules, not the head.
    """

    def __init__(self, vit: vision_transformer.VisionTransformer, final_norm: nn.Module | None):
        super().__init__()
        self.vit_input = vit._process_input  # patchify: (N, 3, H, W) -> (N, S, D), checks the size
        self.conv_proj, self.class_token = vit.conv_proj, vit.class_token
        encoder = vit.encoder
        self.pos_embedding, self.dropout, self.layers = encoder.pos_embedding, encoder.dropout, encoder.layers
        self.final_norm = final_norm or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vit_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.layers(self.dropout(x + self.pos_embedding))
        return self.final_norm(x[:, 0])


def _vit_split(model, head_scope):
    if head_scope == "last_layer":
        return VitClassToken(model, model.encoder.ln), model.heads
    return VitClassToken(model, None), nn.Sequential(model.encoder.ln, model.heads)


def _tiny_efficientnet(num_classes: int) -> nn.Module:
    settings = [efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1), efficientnet.MBConvConfig(4, 3, 2, 8, 16, 2),
                efficientnet.MBConvConfig(4, 5, 2, 16, 24, 1)]
    return efficientnet.EfficientNet(settings, dropout=0.2, num_classes=num_classes, last_channel=64)


def _tiny_convnext(num_classes: int) -> nn.Module:
    settings = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, 32, 1),
                convnext.CNBlockConfig(32, 32, 2), convnext.CNBlockConfig(32, None, 1)]
    return convnext.ConvNeXt(settings, stochastic_depth_prob=0.1, num_classes=num_classes)


def _tiny_vit(num_classes: int) -> nn.Module:
    return vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=num_classes)


def _tiny_swin(num_classes: int) -> nn.Module:
    return swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1, 2, 1],
                                            num_heads=[1, 1, 2, 2], window_size=[2, 2],
                                            stochastic_depth_prob=0.1, num_classes=num_classes)


_EFFICIENTNET = _staged_blocks((efficientnet.MBConv, efficientnet.FusedMBConv), ["classifier"])
_CONVNEXT = _staged_blocks((convnext.CNBlock,), ["classifier"])
_SWIN = _staged_blocks((swin_transformer.SwinTransformerBlock,), ["norm", "head"])

register_backbone("efficientnet_b0", BackboneSpec(
    torchvision.models.efficientnet_b0, "classifier.1", _EFFICIENTNET, _efficientnet_split,
    efficientnet.EfficientNet_B0_Weights.IMAGENET1K_V1))
register_backbone("convnext_tiny", BackboneSpec(torchvision.models.convnext_tiny, "classifier.2", _CONVNEXT,
                                                _convnext_split, convnext.ConvNeXt_Tiny_Weights.IMAGENET1K_V1))
register_backbone("vit_b_16", BackboneSpec(torchvision.models.vit_b_16, "heads.head", _vit_blocks, _vit_split,
                                           vision_transformer.ViT_B_16_Weights.IMAGENET1K_V1))
register_backbone("swin_t", BackboneSpec(torchvision.models.swin_t, "head", _SWIN, _swin_split,
                                         swin_transformer.Swin_T_Weights.IMAGENET1K_V1))
register_backbone("tiny_efficientnet", BackboneSpec(_tiny_efficientnet, "classifier.1", _EFFICIENTNET,
                                                    _efficientnet_split))
register_backbone("tiny_convnext", BackboneSpec(_tiny_convnext, "classifier.2", _CONVNEXT, _convnext_split))
register_backbone("tiny_vit", BackboneSpec(_tiny_vit, "heads.head", _vit_blocks, _vit_split))
register_backbone("tiny_swin", BackboneSpec(_tiny_swin, "head", _SWIN, _swin_split))
