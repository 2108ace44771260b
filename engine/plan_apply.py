"""Carrying out a strategy's plan at an epoch start: the trainable set, module modes, the compiled
forward, and the optimizer with one param group per lr_scales key.

The loop (engine/trainer.py `train_cell`) calls these in order; each does one job. The forward
is recompiled after a change of the trainable set because torch.compile does not notice a
`requires_grad` change on a module it already compiled (pytorch#139476).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from engine.optim import build_optimizer, epoch_lr, param_groups, set_group_lrs, trainable_param_names
from engine.run_context import RunContext
from strategies.protocol import EpochPlan


def trainable_set_changed(previous: EpochPlan | None, plan: EpochPlan) -> bool:
    """True when `plan` trains other tensors, or freezes BatchNorm differently, than `previous`."""
    return previous is None or (plan.trainable, plan.backbone_eval) != (previous.trainable, previous.backbone_eval)


def set_trainable(ctx: RunContext, plan: EpochPlan) -> None:
    """Sets `requires_grad` and the module modes to the plan's, records the trainable tensors on
    `ctx` (model order) and recompiles the forward when the trainable set changed (pytorch#139476)."""
    changed = trainable_set_changed(ctx.plan, plan)
    names = trainable_param_names(plan, ctx.layout)
    params = dict(ctx.model.named_parameters())
    chosen = set(names)
    for name, p in params.items():
        p.requires_grad_(name in chosen)
    ctx.trainable_names, ctx.trainable_params = names, [params[n] for n in names]
    if changed:
        ctx.forward = compiled_forward(ctx)
    set_train_modes(ctx, plan)


def set_train_modes(ctx: RunContext, plan: EpochPlan) -> None:
    """Training mode, except frozen blocks when the plan freezes their BatchNorm statistics."""
    ctx.model.train()
    if plan.backbone_eval:
        trainable = set(ctx.trainable_names)
        for block, names in ctx.layout.blocks.items():
            if trainable.isdisjoint(names):
                for module in ctx.block_modules.get(block, []):
                    ctx.model.get_submodule(module).eval()


def compiled_forward(ctx: RunContext) -> nn.Module:
    """The module batches go through: the model, compiled afresh when trainer.compile is on."""
    if not ctx.cfg.trainer.compile:
        return ctx.model
    torch._dynamo.reset()  # drop graphs guarded on the old requires_grad pattern (pytorch#139476)
    return torch.compile(ctx.model, backend=ctx.cfg.trainer.compile_backend)


def with_scales(plan: EpochPlan, scales: Mapping[str, float] | None) -> EpochPlan:
    """The plan with the lr_scales a strategy measured (None: the plan's own)."""
    return plan if scales is None else replace(plan, lr_scales=dict(scales))


def needs_new_optimizer(previous: EpochPlan | None, plan: EpochPlan) -> bool:
    """A new trainable set, phase, group keys or weight decay (or the plan asks): param groups change."""
    return (trainable_set_changed(previous, plan) or plan.fresh_optimizer or plan.phase != previous.phase
            or set(plan.lr_scales) != set(previous.lr_scales) or plan.weight_decay != previous.weight_decay)


def refresh_optimizer(ctx: RunContext, plan: EpochPlan, epoch: int) -> None:
    """Builds the optimizer when `needs_new_optimizer` (else rescales the groups), sets the epoch's
    learning rates and records `plan` as the one the epoch runs under."""
    if needs_new_optimizer(ctx.plan, plan):
        groups = param_groups(plan, ctx.layout, dict(ctx.model.named_parameters()))
        ctx.optimizer = build_optimizer(ctx.cfg.optim, groups, plan.weight_decay, ctx.device)
        if ctx.ranks is not None:
            _wrap_ranks(ctx, plan)
    else:
        for group in ctx.optimizer.param_groups:
            group["lr_scale"] = float(plan.lr_scales.get(group["name"], 1.0))
    set_group_lrs(ctx.optimizer, epoch_lr(ctx.cfg.optim, plan, epoch, ctx.cfg.trainer.epochs), plan.lr_factor)
    ctx.plan = plan


def apply_plan(ctx: RunContext, plan: EpochPlan, epoch: int) -> None:
    """Carries out a plan whose lr_scales are final (a resumed epoch's saved plan): the epoch start
    of `train_cell` without asking the strategy or calibrating."""
    set_trainable(ctx, plan)
    refresh_optimizer(ctx, plan, epoch)


def _wrap_ranks(ctx: RunContext, plan: EpochPlan) -> None:
    """Puts a DeepSpeed engine over the model and the new optimizer (data-parallel mode)."""
    ranks, cfg = ctx.ranks, ctx.cfg
    if ranks.zero_stage > 0 and (plan.extra_grad or plan.calibration_batches or plan.norms_every_k_steps):
        raise ValueError(f"strategy '{ctx.strategy.name}' reads or changes gradients, which ZeRO stage "
                         f"{ranks.zero_stage} keeps partitioned: use trainer.zero_stage=0")
    ctx.ds_engine = ranks.wrap(ctx.model, ctx.optimizer, ctx.amp_dtype, cfg.data.train_batch_size // ranks.world,
                               cfg.optim.grad_clip_norm)
    if cfg.trainer.compile:
        ctx.ds_engine.compile(backend=cfg.trainer.compile_backend)
    ctx.forward = ctx.ds_engine
