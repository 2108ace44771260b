"""Splitting a dataset that lacks val/test: stratified by class, from a fixed seed (70/15/15 default)."""
from __future__ import annotations

import numpy as np

from engine.data.dataset_index import SPLITS, Sample


def complete_splits(given: dict[str, list[Sample]], fractions: tuple[float, float, float],
                    seed: int) -> tuple[dict[str, list[Sample]], str]:
    """Adds the splits missing from `given` by carving them out of 'train', stratified.

    Args:
        given: split -> samples as found in the data; must contain 'train'.
        fractions: train/val/test fractions; those of train and the missing splits are
            renormalised to divide the given train samples.
        seed: `split_seed`; the same seed always yields the same split.

    Returns:
        (splits with keys 'train', 'val', 'test'; 'data' or 'stratified').
    """
    missing = [s for s in SPLITS if s not in given]
    if not missing:
        return {s: given[s] for s in SPLITS}, "data"
    parts = ["train", *missing]
    train = given["train"]
    cuts = stratified_split([s.label for s in train], [fractions[SPLITS.index(p)] for p in parts], seed)
    carved = {part: [train[i] for i in rows] for part, rows in zip(parts, cuts)}
    return {s: given[s] if s in given and s != "train" else carved[s] for s in SPLITS}, "stratified"


def stratified_split(labels: list[int], fractions: list[float], seed: int) -> list[np.ndarray]:
    """Splits positions 0..N-1 into parts with each class divided by `fractions`.

    Per class, every part gets round(n * fraction) samples (the first part the rest), so
    each part is within one sample of its share; when the class has at least as many
    samples as there are parts, every part with a positive fraction gets at least one.
    The order comes from sorting PCG64 raw outputs seeded by (seed, class): bit-generator
    streams are stable across NumPy versions, unlike `Generator.permutation`.

    Args:
        labels: class of each position.
        fractions: one non-negative weight per part (normalised here); the first must be > 0.
        seed: non-negative seed.

    Returns:
        One sorted int64 array of positions per part; together they cover 0..N-1 once.
    """
    labels = np.asarray(labels, dtype=np.int64)
    weights = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    parts: list[list[np.ndarray]] = [[] for _ in weights]
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        bits = np.random.PCG64(np.random.SeedSequence([seed, int(label)])).random_raw(len(rows))
        rows = rows[np.argsort(bits, kind="stable")]
        counts = _part_counts(len(rows), weights)
        for part, chunk in zip(parts, np.split(rows, np.cumsum(counts)[:-1])):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


def _part_counts(n: int, weights: np.ndarray) -> np.ndarray:
    counts = np.floor(n * weights + 0.5).astype(np.int64)  # round half up, not to even
    if n >= len(weights):
        counts[1:] = np.maximum(counts[1:], weights[1:] > 0)
    counts[0] = n - counts[1:].sum()
    while counts[0] < min(n, 1):  # tiny train weight: give train one back from the largest part
        largest = 1 + int(np.argmax(counts[1:]))
        counts[largest] -= 1
        counts[0] += 1
    return counts
