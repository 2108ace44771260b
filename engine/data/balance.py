"""Class balance for imbalanced data, the normal case in medical imaging (both off by default,
the study's protocol being plain cross-entropy over a uniform order).

- `loss.class_weights: balanced` -> `balanced_class_weights`: class c weighs N / (K * n_c) in
  the cross-entropy (n_c train images of class c, N in all, K classes; a class without train
  images weighs 0), so every class contributes the same total weight.
- `data.sampler: balanced` -> `balanced_sample_weights`: each train draw picks a class uniformly
  among those present, then an image of it uniformly: image i is drawn with probability
  1 / (K' * n_c(i)) (K' classes present). An epoch is N such draws with replacement
  (`sharding.epoch_order`), so minority images come up several times and majority ones may not.
"""
from __future__ import annotations

import numpy as np

SAMPLERS = ("uniform", "balanced")


def balanced_class_weights(labels: list[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """float64 (num_classes,) cross-entropy weights N / (K * n_c), 0 for a class without samples."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (num_classes * counts[present])
    return weights


def balanced_sample_weights(labels: list[int] | np.ndarray) -> np.ndarray:
    """float64 (N,) draw probabilities 1 / (K' * n_c(i)); they sum to 1."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels)
    return 1.0 / (np.count_nonzero(counts) * counts[labels])


def train_draw_weights(labels: list[int] | np.ndarray, sampler: str) -> np.ndarray | None:
    """The train split's draw probabilities for `data.sampler` (None = uniform: a permutation)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"data.sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    return balanced_sample_weights(labels) if sampler == "balanced" and len(labels) else None
