"""LoRA (Hu et al. 2022), beyond the study: low-rank adapters on the backbone, the head trained in full.

Each convolution and linear layer of the backbone (`target_types`) gets an adapter through the
`peft` library (`inject_adapter_in_model`): W x + (alpha / rank) B A x, with B zero at the start,
so training starts from the pretrained function. The backbone's own weights stay frozen; the
adapters and the whole head block train. Left without an adapter, and frozen: convolutions with
groups > 1 (the depthwise ones of ConvNeXt and EfficientNet: peft cannot merge them) and the
projections inside attention modules that read their layers' weights instead of calling them
(`nn.MultiheadAttention`'s out_proj, Swin's qkv and proj: an adapter there would do nothing): on
a ViT or a Swin the adapters sit on the patch projection (Swin: and patch merging) and the MLPs.
BatchNorm statistics follow the target data, as in FT and BitFit: every block holds a trainable
adapter, so the loop keeps the backbone in training mode.

The adapters are merged into the weights for evaluation, and `best.pt` holds the merged weights
under the plain backbone's keys (`LoraAdapter`, strategies/model_adapter.py), so it loads into
`create_backbone(...)` with strict keys and no dependency on peft.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from strategies.registry import register_strategy
from strategies.model_adapter import register_model_adapter
from strategies.protocol import ConstantPlan, EpochPlan, ModelLayout

log = logging.getLogger(__name__)

TARGET_TYPES = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}
# Modules whose forward reads their child layers' weights (F.linear on `qkv.weight`): no adapter there.
WEIGHT_READING_PARENTS = (nn.MultiheadAttention, ShiftedWindowAttention)
ADAPTER = "default"  # peft's adapter name
ADAPTER_KEY = ".lora_"  # what peft's adapter parameters are named (peft's own test of them)


@dataclass
class LoraConfig:
    name: str = "lora"
    rank: int = 8
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input, while training
    target_types: tuple[Literal["Conv2d", "Linear"], ...] = ("Conv2d", "Linear")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"strategy.rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"strategy.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"strategy.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_types or not set(self.target_types) <= set(TARGET_TYPES):
            raise ValueError(f"strategy.target_types must be a non-empty list of {sorted(TARGET_TYPES)}, "
                             f"got {list(self.target_types)}")


def lora_targets(model: nn.Module, head_modules: list[str], target_types: tuple[str, ...]) -> list[str]:
    """The names of the layers that get an adapter: of `target_types`, outside the head, mergeable."""
    types = tuple(TARGET_TYPES[t] for t in target_types)
    in_attention = {f"{name}.{child}" for name, m in model.named_modules()
                    if isinstance(m, WEIGHT_READING_PARENTS) for child, _ in m.named_children()}
    return [name for name, m in model.named_modules()
            if isinstance(m, types) and name not in in_attention and getattr(m, "groups", 1) == 1
            and not any(name == h or name.startswith(h + ".") for h in head_modules)]


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


class LoraAdapter:
    """Adds, merges and exports the adapters (the ModelAdapter of strategy `lora`)."""

    def __init__(self, cfg: LoraConfig):
        self.cfg = cfg

    def adapt_(self, model: nn.Module, head_modules: list[str]) -> None:
        try:
            from peft import LoraConfig as PeftLoraConfig
            from peft import inject_adapter_in_model
        except ImportError:
            raise ValueError("strategy.name=lora needs the peft library: pip install 'medft[peft]'") from None
        targets = lora_targets(model, head_modules, self.cfg.target_types)
        if not targets:
            raise ValueError(f"strategy.target_types: the backbone has no {list(self.cfg.target_types)} layer "
                             "outside the head that an adapter can be merged into")
        # A regular expression of the full names: peft's list form would also match name suffixes.
        pattern = "|".join(re.escape(t) for t in targets)
        inject_adapter_in_model(PeftLoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha,
                                               lora_dropout=self.cfg.dropout, target_modules=pattern), model)

    @contextlib.contextmanager
    def merged(self, model: nn.Module) -> Iterator[None]:
        """The adapters merged into their layers' weights; afterwards the weights are restored exactly
        (from a copy: unmerging alone would leave float rounding in the frozen weights)."""
        layers = [m for _, m in _lora_layers(model)]
        originals = [m.get_base_layer().weight.detach().clone() for m in layers]
        with torch.no_grad():
            for layer in layers:
                layer.merge(adapter_names=[ADAPTER])
        try:
            yield
        finally:
            with torch.no_grad():
                for layer, weight in zip(layers, originals):
                    layer.unmerge()
                    layer.get_base_layer().weight.copy_(weight)

    @torch.no_grad()
    def plain_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """W + (alpha / rank) B A under each layer's plain key; no adapter key."""
        state = dict(model.state_dict())
        for name, layer in _lora_layers(model):
            assert not layer.merged, "plain_state_dict of a merged model would add the adapters twice"
            for key in [k for k in state if k.startswith(f"{name}.lora_")]:
                del state[key]
            for suffix in ("weight", "bias"):
                if f"{name}.base_layer.{suffix}" in state:
                    state[f"{name}.{suffix}"] = state.pop(f"{name}.base_layer.{suffix}")
            state[f"{name}.weight"] = (state[f"{name}.weight"] + layer.get_delta_weight(ADAPTER)).detach()
        return state

    def load_plain_state_dict_(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        """Plain weights into the layers, and B = 0, so that the adapters add nothing to them."""
        state = dict(state)
        for name, _ in _lora_layers(model):
            for suffix in ("weight", "bias"):
                if f"{name}.{suffix}" in state:
                    state[f"{name}.base_layer.{suffix}"] = state.pop(f"{name}.{suffix}")
        for key, value in model.state_dict().items():
            if ADAPTER_KEY in key:
                state[key] = torch.zeros_like(value) if ".lora_B." in key else value
        model.load_state_dict(state)


register_model_adapter("lora")(LoraAdapter)


@register_strategy("lora", LoraConfig, "LoRA: low-rank adapters on the backbone's conv/linear layers, head in full")
def create(cfg: LoraConfig, layout: ModelLayout, initial_params, epochs: int) -> ConstantPlan:
    adapters = frozenset(p for p in layout.param_names if ADAPTER_KEY in p)
    if not adapters:
        raise ValueError("strategy lora: the model has no adapter parameters (was it built by the loop?)")
    counts = [sum(initial_params[p].numel() for p in names)
              for names in (adapters, layout.blocks[layout.head_block], initial_params)]
    log.info("lora: %d adapter and %d head parameters train, of %d", *counts)
    return ConstantPlan("lora", EpochPlan(phase="lora", trainable=adapters | {layout.head_block}))
