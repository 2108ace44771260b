"""The LP feature cache (spec 2): run the frozen backbone once, train the head on its features.

When nothing before the head trains, the backbone runs in eval mode and augmentation is off, the
features of every training image are the same in every epoch, and so are those of every
validation image. They are computed once per stage (kept on the device: the GPU where there is
one) and served in the order and batch composition the image loader would have used, so the
result equals uncached training within float tolerance.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from engine.data.loaders import Batch


def cache_applies(plan, augment: bool, trainable: list[str], head_params: tuple[str, ...]) -> bool:
    """True when the plan asks for the cache and its conditions hold."""
    return plan.use_feature_cache and plan.backbone_eval and not augment and set(trainable) <= set(head_params)


class FeatureCache:
    """`Batches` over cached features: the same batches, in the same order, as the split's loader.

    Args:
        features: (R, ...) one row per cached sample.
        labels: (R,) int64, aligned with `features`.
        row_of: (num_samples,) int64: the row of each split position, -1 where none (an
            unreadable image, or a position another data-parallel rank reads).
        batches: epoch -> the positions of each batch, as the loader cuts them
            (`sharding.shard_batches`); positions without a row are dropped, as the loader drops
            unreadable images.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, row_of: np.ndarray,
                 batches: Callable[[int], list[np.ndarray]]):
        self.features, self.labels, self.row_of, self.batches = features, labels, row_of, batches
        self.num_samples, self.epoch = int((row_of >= 0).sum()), 0

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        for positions in self.batches(self.epoch):
            rows = self.row_of[positions]
            rows = torch.as_tensor(rows[rows >= 0], device=self.features.device)
            yield Batch(self.features[rows], self.labels[rows])


@torch.no_grad()
def build_feature_cache(features_module: nn.Module, ordered, positions: np.ndarray, sources: list, autocast,
                        to_device, batches: Callable[[int], list[np.ndarray]]) -> FeatureCache:
    """Runs `features_module` (in eval mode) once over the samples `ordered` yields.

    Args:
        ordered: `Batches` yielding the split's samples at `positions`, in that order, without
            augmentation.
        positions: the split positions `ordered` covers, in its order.
        sources: every sample source of the split, to find the positions of skipped images.
        autocast, to_device: the run's precision context and input placement.
        batches: how the cache serves the split (see `FeatureCache`).
    """
    features_module.eval()
    chunks, labels, skipped = [], [], set()
    for batch in ordered:
        skipped.update(batch.skipped)
        if batch.labels.numel() == 0:
            continue
        images, y = to_device(batch.images, batch.labels)
        with autocast():
            chunks.append(features_module(images))
        labels.append(y)
    kept = [p for p in positions if str(sources[p]) not in skipped]
    row_of = np.full(len(sources), -1, dtype=np.int64)
    row_of[np.asarray(kept, dtype=np.int64)] = np.arange(len(kept))
    return FeatureCache(torch.cat(chunks), torch.cat(labels), row_of, batches)
