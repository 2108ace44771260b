"""Splitting a dataset that lacks val/test: stratified by class, group-aware, from a fixed seed
(70/15/15 default).

Samples linked by equal content or a common `Sample.group` (`groups.linked_components`) always
land in one split; stratification stays as close to the fractions as the groups allow
(`stratified_split`), and the class fractions achieved are logged.
"""
from __future__ import annotations

import logging

import numpy as np

from engine.data.dataset_index import SPLITS, Sample
from engine.data.groups import linked_components

log = logging.getLogger(__name__)


def complete_splits(given: dict[str, list[Sample]], fractions: tuple[float, float, float],
                    seed: int, classes: list[str] | None = None) -> tuple[dict[str, list[Sample]], str]:
    """Adds the splits missing from `given` by carving them out of 'train', stratified, by group.

    Args:
        given: split -> samples as found in the data; must contain 'train'.
        fractions: train/val/test fractions; those of train and the missing splits are
            renormalised to divide the given train samples.
        seed: `split_seed`; the same seed always yields the same split.
        classes: class names, for the log line of the achieved class fractions.

    Returns:
        (splits with keys 'train', 'val', 'test'; 'data' or 'stratified').
    """
    missing = [s for s in SPLITS if s not in given]
    if not missing:
        return {s: given[s] for s in SPLITS}, "data"
    parts = ["train", *missing]
    train = given["train"]
    cuts = stratified_split([s.label for s in train], [fractions[SPLITS.index(p)] for p in parts], seed,
                            linked_components(train))
    carved = {part: [train[i] for i in rows] for part, rows in zip(parts, cuts)}
    if classes:
        _log_fractions(carved, classes)
    return {s: given[s] if s in given and s != "train" else carved[s] for s in SPLITS}, "stratified"


def stratified_split(labels: list[int], fractions: list[float], seed: int,
                     groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Splits positions 0..N-1 into parts with each class divided by `fractions`, groups kept whole.

    A group (positions with equal `groups` value; None = every position alone) counts for the
    class most of its samples have (the smallest such label on a tie). Per class, each part's
    target is round(n * fraction) samples (the first part the rest; when the class has at least
    as many samples as there are parts, every part with a positive fraction gets at least one).
    The class's groups, in the order of sorted PCG64 raw outputs seeded by (seed, class), go
    each to the first part with room for the whole group, else to the part furthest below its
    target. Without groups that is each part within one sample of its share; with groups a part
    can miss its target by at most about the largest group of the class. (PCG64 streams are
    stable across NumPy versions, unlike `Generator.permutation`.)

    Args:
        labels: class of each position.
        fractions: one non-negative weight per part (normalised here); the first must be > 0.
        seed: non-negative seed.
        groups: int (N,) group id of each position, or None.

    Returns:
        One sorted int64 array of positions per part; together they cover 0..N-1 once.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups, dtype=np.int64)
    weights = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    group_ids, first, members = np.unique(groups, return_index=True, return_inverse=True)
    sizes = np.bincount(members, minlength=len(group_ids))
    group_label = _majority_labels(labels, members, len(group_ids))
    part_of_group = np.zeros(len(group_ids), dtype=np.int64)
    for label in np.unique(group_label):
        ids = np.flatnonzero(group_label == label)
        ids = ids[np.argsort(first[ids], kind="stable")]  # in order of first position, as without groups
        bits = np.random.PCG64(np.random.SeedSequence([seed, int(label)])).random_raw(len(ids))
        ids = ids[np.argsort(bits, kind="stable")]
        room = _part_counts(int(sizes[ids].sum()), weights)
        for gid in ids:
            fits = np.flatnonzero(room >= sizes[gid])
            part = int(fits[0]) if len(fits) else int(np.argmax(room))
            part_of_group[gid] = part
            room[part] -= sizes[gid]
    part_of_position = part_of_group[members]
    return [np.flatnonzero(part_of_position == k) for k in range(len(weights))]


def _majority_labels(labels: np.ndarray, members: np.ndarray, num_groups: int) -> np.ndarray:
    """Per group, the label most of its positions have (the smallest one on a tie)."""
    num_classes = int(labels.max(initial=0)) + 1
    votes = np.zeros((num_groups, num_classes), dtype=np.int64)
    np.add.at(votes, (members, labels), 1)
    return votes.argmax(axis=1)


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


def _log_fractions(carved: dict[str, list[Sample]], classes: list[str]) -> None:
    for part, samples in carved.items():
        counts = np.bincount([s.label for s in samples], minlength=len(classes))
        shares = ", ".join(f"{name} {n} ({n / max(1, len(samples)):.1%})" for name, n in zip(classes, counts))
        log.info("split %s: %d samples: %s", part, len(samples), shares)
