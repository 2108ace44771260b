"""The LP feature cache (spec 2): run the frozen backbone once, train the head on its features.

When nothing before the head trains, the backbone runs in eval mode and augmentation is off, the
features of every training image are the same in every epoch, and so are those of every
validation image. They are computed once per stage (kept on the device: the GPU where there is
one) and served in the order and batch composition the image loader would have used, so the
result equals uncached training within float tolerance.

The features are also kept for the next cells of the process (`shared_rows`): LP, LP-FT's first
phase and gradual unfreezing's first stage of every seed run the same frozen backbone over the
same images, so a grid worker computes them once. The key holds a fingerprint of the backbone's
weights and buffers, so a backbone that differs in any tensor never reuses another's features.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.data.batches import Batch


def cache_applies(plan, augment: bool, trainable: list[str], head_params: tuple[str, ...]) -> bool:
    """True when the plan asks for the cache and its conditions hold."""
    return plan.use_feature_cache and plan.backbone_eval and not augment and set(trainable) <= set(head_params)


# Bound of the process-wide feature cache: at most SHARED_ENTRIES splits' features (the train and
# validation features of the last two backbones), least recently used evicted first.
SHARED_ENTRIES = 4
_SHARED: OrderedDict[tuple, "FeatureRows"] = OrderedDict()


@dataclass(frozen=True)
class FeatureRows:
    """Backbone features of one split.

    Attributes:
        features: (R, ...) one row per cached sample, on the run's device.
        labels: (R,) int64, aligned with `features`.
        row_of: (num_samples,) int64: the row of each split position, -1 where none (an
            unreadable image, or a position another data-parallel rank reads).
    """

    features: torch.Tensor
    labels: torch.Tensor
    row_of: np.ndarray


def weights_fingerprint(module: nn.Module) -> tuple[float, ...]:
    """The norm of every parameter and buffer: equal for the same weights, and in practice only then."""
    tensors = [t.detach().float() for t in itertools.chain(module.parameters(), module.buffers())
               if t.is_floating_point()]
    return tuple(torch.stack(torch._foreach_norm(tensors)).tolist())  # one host sync per stage


def shared_rows(key: tuple, build: Callable[[], FeatureRows]) -> FeatureRows:
    """The rows cached under `key` in this process, built on first use (the oldest entries go first)."""
    if key not in _SHARED:
        _SHARED[key] = build()
        while len(_SHARED) > SHARED_ENTRIES:
            _SHARED.popitem(last=False)
    _SHARED.move_to_end(key)
    return _SHARED[key]


def clear_shared_rows() -> None:
    _SHARED.clear()


class FeatureCache:
    """`Batches` over cached features: the same batches, in the same order, as the split's loader.

    Args:
        rows: the split's features.
        batches: epoch -> the positions of each batch, as the loader cuts them
            (`sharding.shard_batches`); positions without a row are dropped, as the loader drops
            unreadable images.
    """

    def __init__(self, rows: FeatureRows, batches: Callable[[int], list[np.ndarray]]):
        self.features, self.labels, self.row_of, self.batches = rows.features, rows.labels, rows.row_of, batches
        self.num_samples, self.epoch = int((self.row_of >= 0).sum()), 0

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
def build_feature_rows(features_module: nn.Module, ordered, positions: np.ndarray, sources: list, autocast,
                       to_device) -> FeatureRows:
    """Runs `features_module` (in eval mode) once over the samples `ordered` yields.

    Args:
        ordered: `Batches` yielding the split's samples at `positions`, in that order, without
            augmentation.
        positions: the split positions `ordered` covers, in its order.
        sources: every sample source of the split, to find the positions of skipped images.
        autocast, to_device: the run's precision context and input placement.
    """
    # The loop set the epoch's module modes at its start: they are put back afterwards.
    modes = [(m, m.training) for m in features_module.modules()]
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
    for module, training in modes:
        module.train(training)
    return FeatureRows(torch.cat(chunks), torch.cat(labels), row_of)
