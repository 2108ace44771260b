"""The LP feature cache (spec 2): run the frozen backbone once, train the head on its features.

When nothing before the head trains, the backbone runs in eval mode and augmentation is off, the
features of every training image are the same in every epoch, and so are those of every
validation image. They are computed once per stage (kept on the device: the GPU where there is
one) and served in the order and batch composition the image loader would have used, so the
result equals uncached training within float tolerance.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from engine.data.loaders import Batch, epoch_order


def cache_applies(plan, augment: bool, trainable: list[str], head_params: tuple[str, ...]) -> bool:
    """True when the plan asks for the cache and its conditions hold."""
    return plan.use_feature_cache and plan.backbone_eval and not augment and set(trainable) <= set(head_params)


class FeatureCache:
    """`Batches` over cached features: same order, same batches as the image loader of the split.

    Args:
        features: (N, ...) features of the train split in index order (rows of unreadable images
            are absent; `valid` marks which positions have a row).
        labels: (N,) int64, aligned with `features`.
        valid: (num_samples,) bool over all train positions.
        batch_size, seed, shuffle: those of the split's loader; batches are cut from its epoch
            order before unreadable positions are dropped, as the image loader does.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, valid: np.ndarray, batch_size: int, seed: int,
                 shuffle: bool):
        self.features, self.labels, self.valid = features, labels, valid
        self.row_of = np.cumsum(valid) - 1  # position -> row in `features`
        self.num_samples, self.batch_size, self.seed, self.shuffle, self.epoch = (
            len(valid), batch_size, seed, shuffle, 0)

    def _order(self) -> np.ndarray:
        return epoch_order(self.num_samples, self.seed, self.epoch, self.batch_size, self.shuffle)

    def __len__(self) -> int:
        return -(-len(self._order()) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            positions = order[start:start + self.batch_size]
            rows = torch.as_tensor(self.row_of[positions[self.valid[positions]]], device=self.features.device)
            yield Batch(self.features[rows], self.labels[rows])


@torch.no_grad()
def build_feature_cache(features_module: nn.Module, ordered, autocast, to_device, batch_size: int,
                        seed: int, shuffle: bool, sources: list) -> FeatureCache:
    """Runs `features_module` (in eval mode) once over a split in index order.

    Args:
        ordered: `Batches` of the split in index order, without augmentation.
        autocast, to_device: the run's precision context and input placement.
        batch_size, seed, shuffle: how the cache serves the split (those of its loader).
        sources: the split's sample sources, to find the positions of skipped (unreadable) images.
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
    valid = np.array([str(s) not in skipped for s in sources], dtype=bool)
    return FeatureCache(torch.cat(chunks), torch.cat(labels), valid, batch_size, seed, shuffle)
