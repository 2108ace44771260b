"""One training step, and the gradient-norm measurements strategies ask for.

Step order, fixed here and nowhere else (`train_step`):
forward -> loss -> backward -> unscale -> extra_grad_ -> norms if due -> clip -> step.
With fp16 the loss is scaled before the backward and the gradients unscaled after it, so that the
strategy's gradient term, the norms and the clip all see true gradients. In data-parallel mode the
DeepSpeed engine (`ctx.ds_engine`) runs the backward (averaging the gradients) and the clipped step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.optim import epoch_lr, set_group_lrs
from engine.run_context import RunContext
from kernels.multi_tensor_norm import multi_tensor_norm
from strategies.protocol import EpochPlan, TensorNorms


def grads_of(ctx: RunContext) -> list[torch.Tensor]:
    """The trainable tensors' gradients; a parameter the loss does not reach counts as zero."""
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in ctx.trainable_params]


def measure_norms(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor (grad norm, weight norm, grad/weight ratio) of the trainable tensors, on the device."""
    grad_sumsq, weight_sumsq, ratio = multi_tensor_norm(grads_of(ctx), [p.detach() for p in ctx.trainable_params])
    return grad_sumsq.sqrt(), weight_sumsq.sqrt(), ratio


def backward(ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, scaled: bool = True,
             forward=None) -> torch.Tensor:
    """Forward, loss and backward (scaled and unscaled again with fp16 unless `scaled` is off)."""
    with ctx.autocast():
        logits = (forward or ctx.forward)(images)
    loss = F.cross_entropy(logits.float(), labels, weight=ctx.class_weights)
    ctx.model.zero_grad(set_to_none=True)
    if scaled and ctx.ds_engine is not None:
        ctx.ds_engine.backward(loss)
    elif scaled:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    return loss.detach()


def train_step(ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, step: int, epoch: int,
               forward=None) -> torch.Tensor:
    """Runs one optimizer step on one batch under `ctx.plan`, in the module's step order.

    Args:
        step: the step's index within the epoch (norms are due every plan.norms_every_k_steps).
        epoch: the epoch, for the learning rate when refreshed scales change the groups.
        forward: the module the batch goes through (default: ctx.forward).

    Returns:
        The batch's mean loss, detached, on the device (no host synchronisation).
    """
    loss = backward(ctx, images, labels, forward=forward)
    plan = ctx.plan
    if plan.extra_grad:
        ctx.strategy.extra_grad_(ctx.trainable_names, ctx.trainable_params, grads_of(ctx))
    if plan.norms_every_k_steps and (step + 1) % plan.norms_every_k_steps == 0:
        _refresh_scales(ctx, plan, epoch)
    if ctx.ds_engine is not None:
        ctx.ds_engine.step()  # clips by its config's gradient_clipping
        return loss
    if ctx.cfg.optim.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(ctx.trainable_params, ctx.cfg.optim.grad_clip_norm, foreach=True)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return loss


def _refresh_scales(ctx: RunContext, plan: EpochPlan, epoch: int) -> None:
    """Passes the live norms to the strategy and sets the groups' learning rates to its new scales."""
    grad_norms, weight_norms, ratios = measure_norms(ctx)
    scales = ctx.strategy.update_scales(TensorNorms(tuple(ctx.trainable_names), grad_norms, weight_norms, ratios))
    if scales is not None:
        for group in ctx.optimizer.param_groups:
            group["lr_scale"] = float(scales.get(group["name"], group["lr_scale"]))
        set_group_lrs(ctx.optimizer, epoch_lr(ctx.cfg.optim, plan, epoch, ctx.cfg.trainer.epochs), plan.lr_factor)


def empty_step(ctx: RunContext) -> None:
    """A data-parallel step with no sample on this rank (every image of its share unreadable):
    zero gradients, so that the collectives of the other ranks' step complete."""
    ctx.model.zero_grad(set_to_none=True)
    ctx.ds_engine.backward(sum(p.sum() for p in ctx.trainable_params) * 0.0)
    ctx.ds_engine.step()


def calibration_norms(ctx: RunContext, loader, plan: EpochPlan, epoch: int) -> TensorNorms:
    """Norms from `plan.calibration_batches` forward/backward passes without a step.

    The grad/weight ratios and gradient norms are averaged over the batches (Auto-RGN's reference
    semantics); the batch moments for a signal-to-noise ratio come from a running gradient sum.
    The caller has set the plan's trainable set and module modes.
    """
    loader.set_epoch(epoch)
    weights = [p.detach() for p in ctx.trainable_params]
    sums, grad_sum, count = {}, None, 0
    for batch in loader:
        if count == plan.calibration_batches:
            break
        if batch.labels.numel() == 0:
            continue
        # No optimizer exists yet for this epoch, so no loss scaling (fp16 calibration is unscaled);
        # in data-parallel mode the plain model, since DeepSpeed's engine owns every backward it runs.
        backward(ctx, *ctx.to_device(batch.images, batch.labels), scaled=False,
                 forward=ctx.model if ctx.ds_engine is not None else None)
        grads = grads_of(ctx)
        if ctx.ranks is not None:  # the norms of the global batch's gradient, as one process measures
            ctx.ranks.mean_grads_(grads)
        grad_sq, weight_sq, ratio = multi_tensor_norm(grads, weights)
        for key, value in (("norm", grad_sq.sqrt()), ("sq", grad_sq), ("ratio", ratio)):
            sums[key] = sums[key] + value if key in sums else value
        if grad_sum is None:
            grad_sum = [g.detach().clone() for g in grads]
        else:
            torch._foreach_add_(grad_sum, grads)
        count += 1
    ctx.model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("no training batch for the strategy's calibration")
    sum_sq, _, _ = multi_tensor_norm(grad_sum, weights)
    return TensorNorms(tuple(ctx.trainable_names), sums["norm"] / count, weight_sq.sqrt(), sums["ratio"] / count,
                       mean_grad_norms=sum_sq.sqrt() / count, grad_sq_means=sums["sq"] / count)
