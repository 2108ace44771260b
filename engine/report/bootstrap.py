"""Bootstrap intervals over test images, from a cell's saved test predictions (PREDICTIONS_FILE).

- A cell's interval: the test metric recomputed on BOOTSTRAP_SAMPLES resamples (with
  replacement) of its test images; the 2.5th and 97.5th percentiles (so a single seed has an
  uncertainty: that of its finite test set).
- A strategy's Δ vs FT on one (dataset, backbone) case: for each seed both ran, the strategy's and
  FT's cells are paired by test-image position (the same test split, in index order; a pair whose
  labels differ is not the same split and is left out). Each draw resamples every seed's images
  once, for both cells alike, and averages the per-seed Δ over the seeds; the interval is the
  percentiles of those averages. It holds the seeds fixed: it measures the test set's noise, not
  the training seed's (the table's ± std and the paired tests over seeds do that).

Draws come from numpy's default_rng(BOOTSTRAP_SEED), so a report is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.cell_files import PREDICTIONS_FILE

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy")  # what the intervals are of


@dataclass(frozen=True)
class Predictions:
    """A cell's test images in index order: true labels and predicted classes."""

    labels: np.ndarray
    preds: np.ndarray


def read_predictions(folder: Path | None) -> Predictions | None:
    """The cell folder's saved test predictions; None when it has none (cells of older runs)."""
    if folder is None or not (folder / PREDICTIONS_FILE).is_file():
        return None
    with np.load(folder / PREDICTIONS_FILE) as saved:
        return Predictions(saved["labels"].astype(np.int64), saved["probs"].argmax(axis=1))


def resample_indices(rng: np.random.Generator, n: int, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """(samples, n) image positions, each row one resample with replacement."""
    return rng.integers(0, n, size=(samples, n))


def resampled_metric(pred: Predictions, indices: np.ndarray, metric: str) -> np.ndarray:
    """The metric on each row of `indices` (as engine.metrics computes it on those images)."""
    labels, hits = pred.labels[indices], pred.preds[indices] == pred.labels[indices]
    if metric == "accuracy":
        return hits.mean(axis=1)
    if metric != "balanced_accuracy":
        raise ValueError(f"no bootstrap for metric '{metric}' (one of {BOOTSTRAP_METRICS})")
    recall_sum, present = np.zeros(len(indices)), np.zeros(len(indices))
    for c in np.unique(pred.labels):  # a class absent from a resample leaves its mean, as in metrics.py
        count = (labels == c).sum(axis=1)
        recall_sum += np.divide((hits & (labels == c)).sum(axis=1), count, out=np.zeros(len(count)),
                                where=count > 0)
        present += count > 0
    return recall_sum / present


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def cell_interval(pred: Predictions, metric: str, seed: int = BOOTSTRAP_SEED,
                  samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """The bootstrap LEVEL interval of one cell's test metric."""
    indices = resample_indices(np.random.default_rng(seed), len(pred.labels), samples)
    return _percentiles(resampled_metric(pred, indices, metric))


def delta_interval(pairs: list[tuple[Predictions, Predictions]], metric: str, seed: int = BOOTSTRAP_SEED,
                   samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """The paired bootstrap LEVEL interval of the seed-mean Δ (strategy − FT) over `pairs`, one
    (strategy, FT) pair per seed on the same test images; (NaN, NaN) without pairs.

    Raises:
        ValueError: a pair whose labels differ (not the same test images).
    """
    if not pairs:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    total = np.zeros(samples)
    for own, ft in pairs:
        if not np.array_equal(own.labels, ft.labels):
            raise ValueError("a strategy and FT paired on different test images")
        indices = resample_indices(rng, len(own.labels), samples)
        total += resampled_metric(own, indices, metric) - resampled_metric(ft, indices, metric)
    return _percentiles(total / len(pairs))


def outcome(low: float, high: float) -> str:
    """The wins rule: 'win' when the Δ interval lies above 0, 'loss' below, 'tie' when it holds 0;
    'no interval' where the cells had no predictions."""
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    return "win" if low > 0 else "loss" if high < 0 else "tie"
