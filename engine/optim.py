"""Param groups from a strategy's plan, the optimizer factory and the plan's learning-rate schedule."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from engine.config import OptimConfig
from strategies.protocol import EpochPlan, ModelLayout

log = logging.getLogger(__name__)

DEFAULT_GROUP = "default"


def trainable_param_names(plan: EpochPlan, layout: ModelLayout) -> list[str]:
    """Parameter names the plan trains, in model order; `plan.trainable` holds block or parameter names.

    Raises:
        ValueError: a name that is neither a block nor a parameter.
    """
    known = set(layout.param_names)
    unknown = [n for n in plan.trainable if n not in layout.blocks and n not in known]
    if unknown:
        raise ValueError(f"strategy plan names unknown blocks/parameters {sorted(unknown)} "
                         f"(blocks: {list(layout.blocks)})")
    chosen = {p for n in plan.trainable for p in layout.blocks.get(n, (n,))}
    return [p for p in layout.param_names if p in chosen]


def group_key(param: str, block_of: Mapping[str, str], lr_scales: Mapping[str, float]) -> str:
    """The lr_scales key a parameter falls under: its own name, else its block, else the default."""
    if param in lr_scales:
        return param
    return block_of[param] if block_of[param] in lr_scales else DEFAULT_GROUP


def param_groups(plan: EpochPlan, layout: ModelLayout, params: Mapping[str, nn.Parameter]) -> list[dict]:
    """One group per lr_scales key (named after it, carrying `lr_scale`), plus `default` at 1.0."""
    block_of = {p: b for b, ps in layout.blocks.items() for p in ps}
    groups: dict[str, dict] = {}
    for name in trainable_param_names(plan, layout):
        key = group_key(name, block_of, plan.lr_scales)
        group = groups.setdefault(key, {"name": key, "params": [], "param_names": [],
                                        "lr_scale": float(plan.lr_scales.get(key, 1.0))})
        group["params"].append(params[name])
        group["param_names"].append(name)
    return list(groups.values())


def cosine_factor(epoch: int, t_max: int) -> float:
    """Cosine annealing from 1 to 0 over t_max epochs (epoch counts from 0), flat 0 after."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, t_max) / max(1, t_max)))


def schedule_factor(cfg: OptimConfig, plan: EpochPlan, epoch: int, total_epochs: int) -> float:
    """The factor the plan's schedule gives `epoch`: optim.schedule's cosine from plan.schedule_start
    over plan.schedule_epochs (else optim.t_max_epochs, else the run's E); 1 when either is constant."""
    if cfg.schedule == "constant" or not plan.anneal:
        return 1.0
    return cosine_factor(epoch - plan.schedule_start, plan.schedule_epochs or cfg.t_max_epochs or total_epochs)


def epoch_lr(cfg: OptimConfig, plan: EpochPlan, epoch: int, total_epochs: int) -> float:
    """The base rate of `epoch` under the plan's schedule, before lr_factor and the group scales."""
    return cfg.lr * schedule_factor(cfg, plan, epoch, total_epochs)


def set_group_lrs(optimizer: torch.optim.Optimizer, base_lr: float, lr_factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * lr_factor * group["lr_scale"]


def _impl_kwargs(impl: str, device: torch.device) -> dict:
    if impl == "fused" or (impl == "auto" and device.type == "cuda"):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(cfg: OptimConfig, groups: list[dict], weight_decay: float | None,
                    device: torch.device) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD over `groups`: torch's fused kernels on CUDA, foreach on CPU, apex when asked.

    Raises:
        ValueError: optim.impl=apex without apex installed.
    """
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    if cfg.impl == "apex":
        return _apex_optimizer(cfg, groups, wd)
    kwargs = _impl_kwargs(cfg.impl, device)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd, **kwargs)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=wd, **kwargs)


def _apex_optimizer(cfg: OptimConfig, groups: list[dict], wd: float) -> torch.optim.Optimizer:
    try:
        from apex.optimizers import FusedAdam, FusedSGD
    except ImportError:
        raise ValueError("optim.impl=apex: apex is not installed (it is not on PyPI; the NGC PyTorch "
                         "container ships it). Use optim.impl=auto for torch's fused optimizers") from None
    if cfg.name == "sgd":
        return FusedSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    return FusedAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=wd,
                     adam_w_mode=cfg.name == "adamw")
