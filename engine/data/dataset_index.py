"""What a dataset is once indexed: its samples per split and its classes (`DatasetIndex`).

The formats that build it (`sources.py`, `npz.py`), the split carving (`splits.py`), the loaders
and the data check all read these types; this module imports none of them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One example: a file path, or an index into `DatasetIndex.arrays[split]` (npz).

    `group` (patient, study...: from a manifest's group column or `data.group_pattern`; "" = none)
    and `digest` (sha256 of the content, filled by `load_index`) keep linked samples in one split.
    """

    source: str | int
    label: int
    group: str = ""
    digest: str = ""


@dataclass
class DatasetIndex:
    """Everything a loader or the data check needs to know about a dataset.

    Attributes:
        root: the dataset path as configured (folder, manifest or .npz file).
        classes: class names; a sample's label indexes this list.
        splits: 'train', 'val' and 'test' -> samples, in a deterministic order.
        skipped: reason -> number of entries skipped while indexing.
        skipped_files: (path, reason) for every skipped entry.
        arrays: npz only, split -> uint8 images (N,H,W) or (N,H,W,C); else None.
        split_origin: 'data' when all three splits come from the data, 'stratified' otherwise.
    """

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: Counter = field(default_factory=Counter)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] | None = None
    split_origin: Literal["data", "stratified"] = "data"

    def skip(self, path: str | Path, reason: str) -> None:
        """Records one skipped entry."""
        self.skipped[reason] += 1
        self.skipped_files.append((str(path), reason))


def class_counts(index: DatasetIndex) -> dict[str, list[int]]:
    """split -> images per class (in `classes` order)."""
    return {split: np.bincount([s.label for s in samples], minlength=len(index.classes)).tolist()
            for split, samples in index.splits.items()}


def require_two_classes(classes: list[str], path: Path) -> None:
    """Raises ValueError naming `path` when it has fewer than two classes (classification needs two)."""
    if len(classes) < 2:
        raise ValueError(f"{path}: classification needs at least 2 classes, found "
                         f"{len(classes)} ({', '.join(map(repr, classes)) or 'none'})")
