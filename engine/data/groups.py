"""What must stay together when splits are made, and images that carry two labels.

A sample's group links it to others that must land in one split: byte-identical content
(`Sample.digest`, sha256 of the file bytes, or of an npz row with its shape and dtype), and the
`Sample.group` id (a manifest's `group` column or `data.group_pattern`'s first capture group of
the path relative to the dataset folder: patient, study, slide). `linked_components` joins both
relations transitively (a patient's image duplicated under another patient links the two).

Label conflicts: one content under two or more labels. `data.on_label_conflict` decides:
'skip' (default) leaves every copy out, counted in `DatasetIndex.skipped` as 'label conflict';
'error' raises ValueError naming the files; 'keep' trains on them as they are (logged).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.data.dataset_index import DatasetIndex, Sample

log = logging.getLogger(__name__)
LABEL_CONFLICT = "label conflict"
CROSS_SPLIT_COPY = "train copy of a val/test image"


def array_digest(image: np.ndarray) -> str:
    """sha256 of an image array; its shape and dtype are part of it (equal bytes, other shape)."""
    header = f"{image.shape}{image.dtype}".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


def with_digests(index: DatasetIndex, group_pattern: str = "") -> None:
    """Fills `digest` of every sample (reading each file once) and `group` from `group_pattern`."""
    pattern = re.compile(group_pattern) if group_pattern else None
    if pattern is not None and any(s.group for samples in index.splits.values() for s in samples):
        raise ValueError(f"{index.root}: data.group_pattern and the manifest's group column both give "
                         "groups; use one of them")
    base = index.root if index.root.is_dir() else index.root.parent
    unmatched = 0
    for split, samples in index.splits.items():
        filled = []
        for sample in samples:
            if index.arrays is not None:
                digest = array_digest(index.arrays[split][sample.source])
            else:
                digest = hashlib.sha256(Path(sample.source).read_bytes()).hexdigest()
            group = sample.group
            if pattern is not None:
                match = pattern.search(Path(os.path.relpath(sample.source, base)).as_posix())
                group = match.group(1) if match else ""
                unmatched += match is None
            filled.append(replace(sample, digest=digest, group=group))
        index.splits[split] = filled
    if unmatched:
        log.warning("data.group_pattern matched no group id in %d path(s): each is its own group", unmatched)


def linked_components(samples: list[Sample]) -> np.ndarray:
    """Per position, the smallest position it is linked to by equal digest or equal group id."""
    parent = list(range(len(samples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[tuple[str, str], int] = {}
    for i, sample in enumerate(samples):
        for key in (("digest", sample.digest), ("group", sample.group)):
            if not key[1]:
                continue
            j = first_seen.setdefault(key, i)
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(samples))], dtype=np.int64)


def label_conflicts(index: DatasetIndex) -> list[list[tuple[str, Sample]]]:
    """Groups of (split, sample) with one content and more than one label, over all splits."""
    by_digest: dict[str, list[tuple[str, Sample]]] = defaultdict(list)
    for split, samples in index.splits.items():
        for sample in samples:
            by_digest[sample.digest].append((split, sample))
    return [group for group in by_digest.values() if len({s.label for _, s in group}) > 1]


def resolve_label_conflicts_(index: DatasetIndex, policy: str) -> None:
    """Applies `data.on_label_conflict` (module docstring) to the index's splits in place."""
    conflicts = label_conflicts(index)
    if not conflicts or policy == "keep":
        if conflicts:
            log.warning("%d image(s) carry two labels; data.on_label_conflict=keep trains on them", len(conflicts))
        return
    named = ["/".join(f"{index.classes[s.label]}:{s.source}" for _, s in group) for group in conflicts]
    if policy == "error":
        raise ValueError(f"{index.root}: {len(conflicts)} image(s) under two labels (data.on_label_conflict="
                         f"error): {'; '.join(named[:5])}")
    bad = {group[0][1].digest for group in conflicts}
    for split, samples in index.splits.items():
        index.splits[split] = [s for s in samples if s.digest not in bad]
        for sample in (s for s in samples if s.digest in bad):
            index.skip(sample.source if index.arrays is None else f"{split}_images[{sample.source}]", LABEL_CONFLICT)
    log.warning("skipped %d image(s) under two labels (%d files): %s", len(conflicts),
                sum(map(len, conflicts)), "; ".join(named[:5]))


def drop_cross_split_copies_(index: DatasetIndex) -> None:
    """Leaves out the train samples whose content is also in val or test (counted and logged)."""
    held_out = {s.digest for split in ("val", "test") for s in index.splits[split]}
    train = index.splits["train"]
    index.splits["train"] = [s for s in train if s.digest not in held_out]
    for sample in (s for s in train if s.digest in held_out):
        index.skip(sample.source if index.arrays is None else f"train_images[{sample.source}]", CROSS_SPLIT_COPY)
    if len(train) != len(index.splits["train"]):
        log.info("data.drop_cross_split_duplicates: left out %d train copies of val/test images",
                 len(train) - len(index.splits["train"]))


def groups_across_splits(index: DatasetIndex) -> list[tuple[str, list[tuple[str, str]]]]:
    """(group id, [(split, source)]) for every `Sample.group` found in more than one split."""
    members: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, samples in index.splits.items():
        for sample in samples:
            if sample.group:
                members[sample.group].append((split, str(sample.source)))
    return [(group, found) for group, found in members.items() if len({split for split, _ in found}) > 1]
