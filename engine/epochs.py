"""One training epoch (steps from engine/steps.py) and one evaluation pass.

Losses accumulate on the device so that a step never waits for the host; the epoch synchronises
once at its end.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from engine.metrics import classification_metrics
from engine.run_context import RunContext
from engine.steps import empty_step, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_train_epoch(ctx: RunContext, loader, epoch: int, forward=None) -> dict:
    """Trains one epoch under `ctx.plan` (its trainable set and module modes already set);
    returns train/loss and perf/* timings (data wait measured on the host).

    Args:
        loader: the epoch's `Batches` (images, or cached features with `forward` the head).
        forward: the module batches go through (default: the run's model, compiled or not).
    """
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
            if ctx.ds_engine is not None:  # the other ranks wait for this one's gradients
                empty_step(ctx)
                step += 1
            continue
        images, labels = ctx.to_device(batch.images, batch.labels)
        loss_sum += train_step(ctx, images, labels, step, epoch, forward) * labels.numel()
        images_seen += labels.numel()
        step += 1
    if ctx.ranks is not None:  # every rank logs the loss of the whole epoch
        totals = ctx.ranks.sum_(torch.stack([loss_sum, torch.tensor(float(images_seen), device=ctx.device)]))
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
def predict(ctx: RunContext, loader, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), class probabilities (N, C)) of the current weights on every sample of
    `loader` (eval mode), in the loader's order (with several processes, the union of the shards).

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
    if ctx.ranks is not None:  # each rank saw its own shard: metrics come from their union
        probs_t, labels_t = ctx.ranks.gather(probs_t), ctx.ranks.gather(labels_t)
    if not labels_t.numel():
        raise ValueError("evaluation split has no readable image")
    return labels_t, probs_t


def prediction_metrics(labels: torch.Tensor, probs: torch.Tensor) -> dict:
    """The metrics of `predict`'s output, plus the loss (mean NLL) and the number of samples."""
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    metrics = classification_metrics(labels.cpu().numpy(), probs.cpu().numpy())
    return {"loss": loss, "samples": int(labels.numel()), **metrics}


def evaluate(ctx: RunContext, loader, forward=None) -> dict:
    """Metrics of the current weights on every sample of `loader` (eval mode), plus the loss."""
    return prediction_metrics(*predict(ctx, loader, forward))
