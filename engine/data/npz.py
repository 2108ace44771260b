"""MedMNIST-style `.npz` archives as a `DatasetIndex` (`sources.load_index` dispatches here).

`{train,val,test}_images` (N,H,W) or (N,H,W,C) uint8 and `{train,val,test}_labels` (N,) or
(N,1); train is required. A sample's `source` is its row in `DatasetIndex.arrays[split]`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.data.dataset_index import SPLITS, DatasetIndex, Sample, require_two_classes


def scan_npz(archive: Path, index: DatasetIndex) -> dict[str, list[Sample]]:
    """npz samples per split present (train required); stores the images in `index.arrays`."""
    with np.load(archive, allow_pickle=False) as data:
        present = [s for s in SPLITS if s == "train" or {f"{s}_images", f"{s}_labels"} & set(data.files)]
        wanted = [f"{split}_{kind}" for split in present for kind in ("images", "labels")]
        missing = [key for key in wanted if key not in data.files]
        if missing:
            raise ValueError(f"{archive}: missing arrays {missing} (found {sorted(data.files)})")
        index.arrays, labels = {}, {}
        for split in present:
            index.arrays[split], labels[split] = _npz_split(data, split, archive)
    index.classes = [str(i) for i in range(1 + max(int(y.max(initial=0)) for y in labels.values()))]
    require_two_classes(index.classes, archive)
    return {split: [Sample(i, int(y)) for i, y in enumerate(labels[split])] for split in present}


def _npz_split(data, split: str, archive: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    where = f"{archive}: {split}_images"
    channels_ok = images.ndim == 3 or images.ndim == 4 and images.shape[3] in (1, 3)
    if images.dtype != np.uint8 or not channels_ok:
        raise ValueError(f"{where} must be uint8 (N,H,W) or (N,H,W,1|3), got {images.dtype} {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{archive}: {split}_labels must be integers shaped ({len(images)},) or "
                         f"({len(images)},1) (single-label), got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{archive}: {split}_labels must be >= 0, found {labels.min()}")
    return images, labels


def regroup_arrays_(index: DatasetIndex, given: dict[str, list[Sample]]) -> None:
    """Gives each final split its own image array after splits were carved out of train."""
    data = dict(index.arrays)
    for split, samples in index.splits.items():
        source = split if split in given else "train"
        rows = [sample.source for sample in samples]
        if rows != list(range(len(data[source]))):
            index.arrays[split] = data[source][rows]
            index.splits[split] = [replace(s, source=i) for i, s in enumerate(samples)]
