"""What an epoch trains and validates on: the image loaders and the model, or the LP feature
cache (engine/feature_cache.py) and the head when nothing before the head trains."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from torch import nn

from engine.config import to_dict
from engine.data.balance import train_draw_weights
from engine.data.sharding import shard_batches
from engine.feature_cache import FeatureCache, build_feature_rows, cache_applies, shared_rows, weights_fingerprint
from engine.models import features_and_head
from engine.run_context import RunContext
from strategies.protocol import EpochPlan


@dataclass(frozen=True)
class EpochInputs:
    """What one epoch trains and validates on, and through which module."""

    train: object  # Batches
    val: object  # Batches
    train_forward: nn.Module
    eval_forward: nn.Module


def epoch_inputs(ctx: RunContext, plan: EpochPlan, loaders, index) -> EpochInputs:
    """The epoch's batches and the module they go through: cached features and the head when
    the plan allows it (train and validation alike), else the image loaders and the model.

    The caches of a head-only stage are kept on `ctx.cached_inputs` until the trainable set changes.
    """
    cfg = ctx.cfg
    head = ctx.layout.blocks[ctx.layout.head_block]
    if not (cfg.trainer.feature_cache and cache_applies(plan, cfg.data.augment, ctx.trainable_names, head)):
        ctx.cached_inputs = None
        return EpochInputs(loaders.train, loaders.val, ctx.forward, ctx.forward)
    if ctx.cached_inputs is None or ctx.cached_inputs[0] != plan.trainable:
        ctx.cached_inputs = (plan.trainable, _cached_inputs(ctx, loaders, index))
    return ctx.cached_inputs[1]


def _cached_inputs(ctx: RunContext, loaders, index) -> EpochInputs:
    cfg = ctx.cfg
    features, head_module = features_and_head(ctx.model, cfg.model.backbone, cfg.model.head_scope)
    seed, shard = cfg.trainer.seed, ctx.shard
    # Same images, same backbone weights, same precision and shard: the same features.
    same_features = (json.dumps(to_dict(cfg.data), sort_keys=True), _pixel_source(loaders.train),
                     cfg.model.backbone, cfg.model.head_scope, weights_fingerprint(features),
                     str(ctx.device), str(ctx.amp_dtype), ctx.channels_last, shard)

    def cache(ordered, split, batch_size, shuffle, positions):
        samples = index.splits[split]
        rows = shared_rows((split, *same_features), lambda: build_feature_rows(
            features, ordered, positions, [s.source for s in samples], ctx.autocast, ctx.to_device))
        weights = train_draw_weights([s.label for s in samples], cfg.data.sampler) if shuffle else None
        return FeatureCache(rows, lambda epoch: shard_batches(len(samples), seed, epoch, batch_size, shuffle, shard,
                                                              weights))
    n_train, n_val = len(index.splits["train"]), len(index.splits["val"])
    val_positions = np.arange(n_val)[shard[0]::shard[1]]  # the rank's evaluation shard
    # Every rank caches the whole train split: its batches draw from all of it.
    return EpochInputs(cache(loaders.train_in_order, "train", ctx.rank_data_config().train_batch_size, True,
                             np.arange(n_train)),
                       cache(loaders.val, "val", cfg.data.eval_batch_size, False, val_positions),
                       head_module, head_module)


def _pixel_source(batches) -> tuple[str, ...]:
    """The classes that decode a loader's images (data.loader=auto may pick another one per cell:
    their pixels differ by a level or so, so their features are not interchangeable)."""
    chain, node = [], batches
    while node is not None:
        chain.append(type(node).__name__)
        node = getattr(node, "decoder", None) or getattr(node, "inner", None)
    return tuple(chain)
