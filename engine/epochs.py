"""One training epoch, one evaluation pass, and the norm measurements strategies ask for.

The step order is fixed here and nowhere else: forward -> loss -> backward -> unscale ->
extra_grad_ -> norms if due -> clip -> step. Losses accumulate on the device so that a step never
waits for the host; the epoch synchronises once at its end.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from engine.metrics import classification_metrics
from engine.optim import epoch_lr, set_group_lrs
from engine.run_context import RunContext
from strategies.protocol import EpochPlan, TensorNorms


def _grads(ctx: RunContext) -> list[torch.Tensor]:
    # A parameter the loss does not reach has no gradient; it counts as zero.
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in ctx.trainable_params]


def measure_norms(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor (grad norm, weight norm, grad/weight ratio) of the trainable tensors, on the device."""
    from kernels.multi_tensor_norm import multi_tensor_norm

    grad_sumsq, weight_sumsq, ratio = multi_tensor_norm(_grads(ctx), [p.detach() for p in ctx.trainable_params])
    return grad_sumsq.sqrt(), weight_sumsq.sqrt(), ratio


def _backward(ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, scaled: bool = True,
              forward=None) -> torch.Tensor:
    """Forward, loss and backward; with fp16 the loss is scaled and the gradients unscaled again.

    In data-parallel mode the DeepSpeed engine runs the backward and averages the gradients.
    """
    with ctx.autocast():
        logits = (forward or ctx.forward)(images)
    loss = F.cross_entropy(logits.float(), labels)
    ctx.model.zero_grad(set_to_none=True)
    if scaled and ctx.engine is not None:
        ctx.engine.backward(loss)
    elif scaled:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    return loss.detach()


def train_step(ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, step: int, epoch: int,
               forward=None) -> torch.Tensor:
    loss = _backward(ctx, images, labels, forward=forward)
    plan = ctx.plan
    if plan.extra_grad:
        ctx.strategy.extra_grad_(ctx.trainable_names, ctx.trainable_params, _grads(ctx))
    if plan.norms_every_k_steps and (step + 1) % plan.norms_every_k_steps == 0:
        grad_norms, weight_norms, ratios = measure_norms(ctx)
        scales = ctx.strategy.update_scales(TensorNorms(tuple(ctx.trainable_names), grad_norms, weight_norms, ratios))
        if scales is not None:
            for group in ctx.optimizer.param_groups:
                group["lr_scale"] = float(scales.get(group["name"], group["lr_scale"]))
            set_group_lrs(ctx.optimizer, epoch_lr(ctx.cfg.optim, epoch, ctx.cfg.trainer.epochs), plan.lr_factor)
    if ctx.engine is not None:
        ctx.engine.step()  # clips by its config's gradient_clipping
        return loss
    if ctx.cfg.optim.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(ctx.trainable_params, ctx.cfg.optim.grad_clip_norm, foreach=True)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return loss


def _empty_step(ctx: RunContext) -> None:
    """A data-parallel step with no sample on this rank (every image of its share unreadable):
    zero gradients, so that the collectives of the other ranks' step complete."""
    ctx.model.zero_grad(set_to_none=True)
    ctx.engine.backward(sum(p.sum() for p in ctx.trainable_params) * 0.0)
    ctx.engine.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_train_epoch(ctx: RunContext, loader, plan: EpochPlan, epoch: int, forward=None) -> dict:
    """Trains one epoch; returns train/loss and perf/* timings (data wait measured on the host).

    Args:
        loader: the epoch's `Batches` (images, or cached features with `forward` the head).
        forward: the module batches go through (default: the run's model, compiled or not).
    """
    ctx.set_train_modes(plan)
    loader.set_epoch(epoch)
    max_steps = ctx.cfg.trainer.max_steps_per_epoch
    loss_sum = torch.zeros((), device=ctx.device)
    images_seen = skipped = step = 0
    wait_s = 0.0
    start = time.perf_counter()
    batches = iter(loader)
    while max_steps is None or step < max_steps:
        before = time.perf_counter()
        batch = next(batches, None)
        wait_s += time.perf_counter() - before
        if batch is None:
            break
        skipped += len(batch.skipped)
        if batch.labels.numel() == 0:
            if ctx.engine is not None:  # the other ranks wait for this one's gradients
                _empty_step(ctx)
                step += 1
            continue
        images, labels = ctx.to_device(batch.images, batch.labels)
        loss_sum += train_step(ctx, images, labels, step, epoch, forward) * labels.numel()
        images_seen += labels.numel()
        step += 1
    if ctx.parallel is not None:  # every rank logs the loss of the whole epoch
        totals = ctx.parallel.sum_(torch.stack([loss_sum, torch.tensor(float(images_seen), device=ctx.device)]))
        loss_sum, images_seen = totals[0], int(totals[1].item())
    _sync(ctx.device)
    elapsed = time.perf_counter() - start
    ctx.counters["train_s"] += elapsed
    ctx.counters["train_images"] += images_seen
    ctx.counters["skipped_images"] += skipped
    return {"train/loss": loss_sum.item() / max(1, images_seen), "train/images": images_seen,
            "train/skipped_images": skipped, "perf/epoch_s": elapsed,
            "perf/img_per_s": images_seen / elapsed if elapsed else 0.0,
            "perf/compute_img_per_s": images_seen / max(1e-9, elapsed - wait_s),
            "perf/data_wait_frac": wait_s / elapsed if elapsed else 0.0}


@torch.no_grad()
def evaluate(ctx: RunContext, loader, forward=None) -> dict:
    """Metrics of the current weights on every sample of `loader` (eval mode), plus the loss.

    Args:
        forward: the module batches go through (default: the run's model); the head when the
            loader serves cached features.
    """
    ctx.model.eval()
    forward = forward or ctx.forward
    probs, labels = [], []
    for batch in loader:
        if batch.labels.numel() == 0:
            continue
        images, y = ctx.to_device(batch.images, batch.labels)
        with ctx.autocast():
            logits = forward(images)
        probs.append(logits.float().softmax(dim=1))
        labels.append(y)
    probs_t = torch.cat(probs) if probs else torch.empty(0, len(ctx.classes), device=ctx.device)
    labels_t = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=ctx.device)
    if ctx.parallel is not None:  # each rank saw its own shard: metrics come from their union
        probs_t, labels_t = ctx.parallel.gather(probs_t), ctx.parallel.gather(labels_t)
    if not labels_t.numel():
        raise ValueError("evaluation split has no readable image")
    loss = F.nll_loss(probs_t.clamp_min(1e-12).log(), labels_t).item()
    metrics = classification_metrics(labels_t.cpu().numpy(), probs_t.cpu().numpy())
    return {"loss": loss, "samples": int(labels_t.numel()), **metrics}


def calibration_norms(ctx: RunContext, loader, plan: EpochPlan, epoch: int) -> TensorNorms:
    """Norms from `plan.calibration_batches` forward/backward passes without a step.

    The grad/weight ratios and gradient norms are averaged over the batches (Auto-RGN's reference
    semantics); the batch moments for a signal-to-noise ratio come from a running gradient sum.
    """
    from kernels.multi_tensor_norm import multi_tensor_norm

    ctx.set_train_modes(plan)
    loader.set_epoch(epoch)
    weights = [p.detach() for p in ctx.trainable_params]
    sums, grad_sum = {}, None
    count = 0
    for batch in loader:
        if count == plan.calibration_batches:
            break
        if batch.labels.numel() == 0:
            continue
        # No optimizer exists yet for this epoch, so no loss scaling (fp16 calibration is unscaled);
        # in data-parallel mode the plain model, since DeepSpeed's engine owns every backward it runs.
        _backward(ctx, *ctx.to_device(batch.images, batch.labels), scaled=False,
                  forward=ctx.model if ctx.engine is not None else None)
        grads = _grads(ctx)
        if ctx.parallel is not None:  # the norms of the global batch's gradient, as one process measures
            ctx.parallel.mean_grads_(grads)
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
